"""Every invalid reply is rejected and never reaches the global model."""

import json

import numpy as np
import pytest
from flwr.common import (
    Code,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)

from server.app import build_round
from server.optimizers import ModelState
from server.round import Aggregate, RoundState
from server.steps import ReplyValidation, RoundRecorder, ServerOptimizer
from server.strategy import ConfideStrategy
from server.validation import InvalidReply, ReplyValidator
from shared.models import build_model, global_arrays, global_names
from shared.rundir import RunDirectory
from tests.conftest import small_config


class FakeProxy:
    """Stands in for Flower's ClientProxy: the strategy only reads node_id."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id


def _fit_res(arrays, num_examples=10, metrics=None):
    return FitRes(
        Status(Code.OK, ""), ndarrays_to_parameters(arrays), num_examples, metrics or {"loss": 0.5}
    )


def make_strategy(tmp_path, **changes):
    """A ConfideStrategy over a small NeuMF, mid-round 1: (strategy, arrays, names)."""
    config = small_config(out_dir=str(tmp_path / "run"), **({"strategy": "fedavg"} | changes))
    model = build_model(config.model, 1, 200, dim=8, mlp_layers=(16, 8), seed=0)
    names, arrays = global_names(model), global_arrays(model)
    initial = ndarrays_to_parameters(arrays)
    validator = ReplyValidator.for_global(
        names, arrays, max_num_examples=1000, max_update_norm=50.0
    )
    run_dir = RunDirectory.create(config, "federated")
    sampler, pipeline, model = build_round(config, names, arrays, run_dir, validator)
    strategy = ConfideStrategy(config, sampler, pipeline, model)
    assert parameters_to_ndarrays(strategy.initialize_parameters(None))[0].tobytes() == (
        parameters_to_ndarrays(initial)[0].tobytes()
    )
    strategy.begin_round(1).started = 0.0
    return strategy, arrays, names


def validator_of(strategy: ConfideStrategy) -> ReplyValidator:
    return strategy.pipeline.find(ReplyValidation).validator


@pytest.fixture
def setup(tmp_path):
    # One valid reply is enough here: these tests are about which replies count, not how many
    # must (tests/server/test_failing_devices.py).
    strategy, arrays, _ = make_strategy(tmp_path, min_fit_clients=1)
    return strategy, arrays


def _corrupt(arrays, kind):
    bad = [a.copy() for a in arrays]
    if kind == "nan":
        bad[0][0, 0] = np.nan
    elif kind == "inf":
        bad[-1][...] = np.inf
    elif kind == "shape":
        bad[0] = np.zeros((bad[0].shape[0] + 1, bad[0].shape[1]), np.float32)
    elif kind == "dtype":
        bad[0] = bad[0].astype(np.float64)
    elif kind == "missing":
        bad = bad[:-1]
    elif kind == "extra":
        bad = [*bad, np.zeros(3, np.float32)]
    elif kind == "huge":
        bad[0] = bad[0] + 1e30
    return bad


BAD_ARRAYS = ["nan", "inf", "shape", "dtype", "missing", "extra", "huge"]


@pytest.mark.parametrize("kind", BAD_ARRAYS)
def test_invalid_arrays_rejected_with_reason(setup, kind):
    strategy, arrays = setup
    with pytest.raises(InvalidReply):
        validator_of(strategy).check(_fit_res(_corrupt(arrays, kind)), arrays)


@pytest.mark.parametrize("examples", [0, -5, 10**9, 2.5, True])
def test_bad_example_counts_rejected(setup, examples):
    strategy, arrays = setup
    with pytest.raises(InvalidReply, match="num_examples"):
        validator_of(strategy).check(_fit_res(arrays, num_examples=examples), arrays)


def test_undecodable_payload_rejected(setup):
    strategy, arrays = setup
    reply = _fit_res(arrays)
    reply.parameters = Parameters(tensors=[b"not numpy"] * len(arrays), tensor_type="numpy.ndarray")
    with pytest.raises(InvalidReply, match="decoded"):
        validator_of(strategy).check(reply, arrays)


@pytest.mark.parametrize("kind", BAD_ARRAYS)
def test_invalid_reply_never_reaches_the_model(setup, kind):
    strategy, arrays = setup
    good = [a + 0.01 for a in arrays]
    replies = [
        (FakeProxy(1), _fit_res(good, 10)),
        (FakeProxy(2), _fit_res(_corrupt(arrays, kind), 10)),
    ]
    parameters, _ = strategy.aggregate_fit(1, replies, [])
    # the aggregate is exactly the one valid reply: the corrupt one had no weight at all
    for got, want in zip(parameters_to_ndarrays(parameters), good, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert strategy.round.record.fit_rejected == 1 and strategy.round.record.fit_replies == 1


def test_round_with_no_valid_reply_leaves_model_unchanged(setup):
    strategy, arrays = setup
    replies = [
        (FakeProxy(i), _fit_res(_corrupt(arrays, kind))) for i, kind in enumerate(BAD_ARRAYS)
    ]
    parameters, metrics = strategy.aggregate_fit(1, replies, [RuntimeError("client crashed")])
    assert parameters is None and metrics == {}  # Flower keeps the previous global model
    assert strategy.round.record.skipped.startswith("no valid trained replies")
    assert strategy.round.record.fit_failures == len(BAD_ARRAYS) + 1
    strategy._finish_round()
    run_dir = strategy.pipeline.find(RoundRecorder).run_dir
    logged = json.loads((run_dir.path / "metrics.jsonl").read_text().splitlines()[0])
    assert logged["round"] == 1 and logged["fit_rejected"] == len(BAD_ARRAYS)


def test_fedavg_weights_by_examples(setup):
    strategy, arrays = setup
    a = [x + 0.01 for x in arrays]
    b = [x + 0.04 for x in arrays]
    parameters, _ = strategy.aggregate_fit(
        1, [(FakeProxy(1), _fit_res(a, 30)), (FakeProxy(2), _fit_res(b, 10))], []
    )
    for got, base in zip(parameters_to_ndarrays(parameters), arrays, strict=True):
        np.testing.assert_allclose(got, base + 0.0175, atol=1e-6)  # (30*0.01 + 10*0.04) / 40
    assert strategy.round.record.train_loss == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["fedavg", "itemsum"])
def test_server_momentum_reaches_the_optimizer(tmp_path, name):
    """Two rounds with the same average update: with momentum the second step is 1.9x the first."""
    config = small_config(strategy=name, server_momentum=0.9, out_dir=str(tmp_path))
    model = ModelState([np.zeros(3, np.float32)])
    optimizer = ServerOptimizer(name, model, ["output.bias"], config)
    current = model.arrays[0]
    steps = []
    for server_round in (1, 2):
        # the round's average update is 1.0 (one device, weight 1)
        optimizer.apply(RoundState(server_round, 0.0), Aggregate([np.full(3, 1.0)], cohort=1))
        new = model.arrays[0]
        steps.append(float((new - current)[0]))
        current = new
    assert steps == pytest.approx([1.0, 1.9])
