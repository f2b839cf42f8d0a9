"""The round's steps: the app's lists per config, and orders that are refused at setup."""

import numpy as np
import pytest

from server import steps
from server.app import build_round
from server.optimizers import ModelState
from server.pipeline import Pipeline, PipelineError
from server.user_dp import UserDPState
from server.validation import ReplyValidator
from shared.rundir import RunDirectory
from tests.conftest import small_config

NAMES = ["item_gmf.weight", "output.bias"]
ARRAYS = [np.zeros((4, 2), np.float32), np.zeros(1, np.float32)]


def _names(tmp_path, **changes):
    config = small_config(out_dir=str(tmp_path), **changes)
    sampler, pipeline, _ = build_round(config, NAMES, ARRAYS, RunDirectory.create(config, "x"))
    return type(sampler).__name__, [step.name for step in pipeline.steps]


def test_the_app_lists_every_step_in_order(tmp_path):
    tail = ["ServerOptimizer", "RoundRecorder", "PrivacyLedger", "Checkpointer"]
    assert _names(tmp_path) == (
        "CountSampler",
        [
            "ReplyValidation",
            "DeviceReports",
            "EnoughReplies",
            "PlaintextSum",
            "MeanOfTrained",
            *tail,
        ],
    )
    assert _names(tmp_path, dp_user=True) == (
        "PoissonSampler",
        [
            *("ReplyValidation", "DeviceReports", "ServerClip", "EnoughReplies"),
            *("PlaintextSum", "UserLevelNoise", *tail),
        ],
    )
    assert _names(tmp_path, secagg=True) == (
        "CountSampler",
        ["DeviceReports", "SecAggSum", "MeanOfTrained", *tail],
    )
    assert _names(tmp_path, secagg=True, dp_user=True) == (
        "PoissonSampler",
        ["DeviceReports", "SecAggSum", "UserLevelNoise", *tail],
    )


def _steps(tmp_path, **changes):
    """The user-level DP steps, by name, to be put in orders the pipeline must refuse."""
    config = small_config(out_dir=str(tmp_path), dp_user=True, **changes)
    model = ModelState(list(ARRAYS))
    run_dir = RunDirectory.create(config, "x")
    validator = ReplyValidator.for_global(NAMES, ARRAYS, max_num_examples=10, max_update_norm=1)
    return {
        "validate": steps.ReplyValidation(validator, model),
        "reports": steps.DeviceReports(config),
        "clip": steps.ServerClip(1.0),
        "sum": steps.PlaintextSum(model, uniform=True),
        "noise": steps.UserLevelNoise(config, UserDPState()),
        "mean": steps.MeanOfTrained(),
        "optimizer": steps.ServerOptimizer("fedavg", model, NAMES, config),
        "recorder": steps.RoundRecorder(run_dir, 1),
        "ledger": steps.PrivacyLedger(config, run_dir),
    }


def _pipeline(by_name, *names):
    return Pipeline([by_name[name] for name in names])


def test_noise_before_clipping_is_refused_at_setup(tmp_path):
    by_name = _steps(tmp_path)
    order = ("validate", "noise", "clip", "sum", "optimizer", "recorder", "ledger")
    with pytest.raises(PipelineError) as err:
        _pipeline(by_name, *order)
    message = str(err.value)
    assert "UserLevelNoise" in message and "ServerClip" in message
    assert "move UserLevelNoise after ServerClip" in message


def test_noise_with_nothing_clipping_is_refused(tmp_path):
    by_name = _steps(tmp_path)
    with pytest.raises(PipelineError, match="UserLevelNoise needs one of ServerClip, SecAggSum"):
        _pipeline(by_name, "validate", "sum", "noise", "optimizer", "recorder", "ledger")


@pytest.mark.parametrize(
    ("order", "words"),
    [
        (("clip", "validate", "sum", "noise", "optimizer"), "ServerClip after ReplyValidation"),
        (("validate", "clip", "sum", "optimizer", "noise"), "move ServerOptimizer after"),
        (("validate", "clip", "sum", "noise", "mean", "optimizer"), "exactly one RELEASE step"),
        (("validate", "clip", "sum", "noise"), "exactly one OPTIMIZE step"),
        (("validate", "clip", "sum", "noise", "optimizer", "ledger", "recorder"), "move Priv"),
        (("validate", "clip", "sum", "noise", "recorder", "optimizer"), "move RoundRecorder"),
    ],
)
def test_other_broken_orders_are_refused(tmp_path, order, words):
    with pytest.raises(PipelineError, match=words):
        _pipeline(_steps(tmp_path), *order)
