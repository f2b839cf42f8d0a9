"""The pipeline against what the strategy wrote before it (tests/fixtures/strategy_golden.json).

The golden file was written by the one-object strategy this refactor replaced, driven through the
same scripted rounds (:mod:`tests.server.rounds_driver`): every sampled cohort and instruction,
every metrics and ledger field must be identical; the model only to float32 rounding, because the
pipeline sums updates in float64 where Flower's FedAvg summed models in float32.

One deliberate change since: a round that asks fewer users than are available now draws them
with the run's seed over user keys (server/population.py) instead of Flower's unseeded
``ClientManager.sample``, so the ``secagg`` case's cohorts (6 of 12 nodes) were rewritten in the
fixture; its sizes, instructions, metrics, ledger and models are the old strategy's still.
"""

import json
from pathlib import Path

import pytest

from server.app import build_round
from server.strategy import ConfideStrategy
from server.validation import ReplyValidator
from shared.models import build_model, global_arrays, global_names
from shared.rundir import RunDirectory
from tests.conftest import small_config
from tests.server.rounds_driver import CASES, drive

GOLDEN = json.loads(
    (Path(__file__).resolve().parents[1] / "fixtures" / "strategy_golden.json").read_text()
)


def driven_strategy(config):
    """The real strategy and pipeline over the driver's 200-item NeuMF, writing a run directory."""
    model = build_model(config.model, 1, 200, dim=8, mlp_layers=(16, 8), seed=0)
    names, arrays = global_names(model), global_arrays(model)
    validator = ReplyValidator.for_global(
        names, arrays, max_num_examples=1000, max_update_norm=50.0
    )
    run_dir = RunDirectory.create(config, "federated")
    return ConfideStrategy(config, *build_round(config, names, arrays, run_dir, validator)), run_dir


@pytest.mark.parametrize("name", sorted(CASES))
def test_rounds_match_the_old_strategy(tmp_path, name):
    changes = CASES[name]
    config = small_config(out_dir=str(tmp_path), num_server_rounds=4, eval_every=2, **changes)
    strategy, run_dir = driven_strategy(config)
    got, want = drive(strategy, changes, run_dir.path), GOLDEN[name]
    assert got["sent"] == want["sent"]
    assert got["metrics"] == want["metrics"]
    assert got["ledger"] == want["ledger"]
    for got_round, want_round in zip(got["sums"], want["sums"], strict=True):
        for (dtype, total, squares), (want_dtype, want_total, want_squares) in zip(
            got_round, want_round, strict=True
        ):
            assert dtype == want_dtype
            assert total == pytest.approx(want_total, rel=1e-4, abs=1e-4)
            assert squares == pytest.approx(want_squares, rel=1e-5)
