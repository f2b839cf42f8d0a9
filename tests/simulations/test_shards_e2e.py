"""End to end: nodes that simulate shards of users (cohort-size > 1) train what one user per node
trains, in Flower's real simulation engine.

The same seeds give the same cohorts (the server samples users, not Flower's random node ids),
the same per-user rounds (client/cohort.py) and so the same global model, up to float rounding:
the shard sums its users' updates in float64 before the server adds the shards.
"""

import json

import numpy as np
import pytest

from shared.privacy import epsilon
from shared.wire import EPSILON_DECIMALS
from tests.conftest import read_jsonl, run_confide

pytestmark = pytest.mark.slow

SMALL = {"synthetic-users": 40, "synthetic-items": 200}
CASES = {
    # a sampled cohort (16 of 40), FedAvg weighted by example counts
    "fedavg": {"clients-per-round": 16},
    # user-level DP: Poisson sampling, per-user clipping to S (in the shard), server noise
    "dp-user": {
        "dp-user": "true",
        "fraction-fit": 0.4,
        "dp-user-noise-multiplier": 1.0,
        "dp-user-clip-norm": 0.5,
        "dp-reproducible-noise": "true",
    },
    # pooled interaction-level DP: one clipped gradient sum per user, the noise on the sum
    "pooled": {
        "dp-interaction": "true",
        "dp-interaction-mode": "pooled",
        "strategy": "fedadam",
        "server-learning-rate": 0.01,
        "dp-noise-multiplier": 1.0,
        "dp-pooled-sample-rate": 0.3,
        "dp-reproducible-noise": "true",
    },
}
VOLATILE = {"fit_seconds", "round_seconds", "elapsed_seconds", "model_sha256", "eval_seconds"}


def _run(tmp_path, name, settings):
    out = tmp_path / name
    code, log = run_confide(
        "simulate", "--config", "simulations/smoke.toml", "--out", str(out), settings=settings
    )
    assert code == 0, log[-3000:]
    return out, log


@pytest.mark.parametrize("case", sorted(CASES))
def test_shards_train_what_one_user_per_node_trains(tmp_path, case):
    settings = SMALL | CASES[case]
    single, _ = _run(tmp_path, "single", settings)
    shards, log = _run(tmp_path, "shards", settings | {"cohort-size": 8})
    assert "5 of 5 nodes said their partition id" in log  # 40 users in shards of 8

    one, many = read_jsonl(single / "metrics.jsonl"), read_jsonl(shards / "metrics.jsonl")
    assert [r["round"] for r in many] == [1, 2]
    for a, b in zip(one, many, strict=True):
        assert a["fit_sampled"] == b["fit_sampled"] > 0  # the same users were drawn
        assert b["fit_replies"] == b["fit_sampled"] and b["fit_rejected"] == b["fit_failures"] == 0
        assert b["eval_clients"] == 40
        for key in set(a) - VOLATILE:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    with np.load(single / "global_model.npz") as x, np.load(shards / "global_model.npz") as y:
        assert set(x.files) == set(y.files)
        for name in x.files:
            np.testing.assert_allclose(y[name], x[name], rtol=1e-4, atol=1e-6)
    if case == "dp-user":
        ledgers = [read_jsonl(d / "privacy_ledger.jsonl") for d in (single, shards)]
        for a, b in zip(*ledgers, strict=True):
            assert b["user_level"]["epsilon"] == pytest.approx(a["user_level"]["epsilon"])
            assert b["user_level"]["sampled"] == a["user_level"]["sampled"]
    if case == "pooled":  # every user in both rounds: one step at (σ 1, q 0.3) per round
        want = round(epsilon([(1.0, 0.3, 2)], 1e-5), EPSILON_DECIMALS)
        for ledger in (read_jsonl(d / "privacy_ledger.jsonl") for d in (single, shards)):
            unit = ledger[-1]["interaction_level"]
            assert (unit["mode"], unit["noise_source"]) == ("pooled", "server")
            assert unit["epsilon_min"] == unit["epsilon_max"] == want
            assert unit["devices_reporting"] == 40


def test_shards_report_each_users_interaction_level_epsilon(tmp_path):
    """Under DP-SGD a shard reports every drawn user's ε and σ; the ledger counts users."""
    out, _ = _run(
        tmp_path,
        "dp",
        SMALL
        | {
            "cohort-size": 16,
            "dp-interaction": "true",
            "dp-noise-multiplier": 1.0,
            "dp-max-grad-norm": 1.0,
        },
    )
    ledger = read_jsonl(out / "privacy_ledger.jsonl")
    rounds = read_jsonl(out / "metrics.jsonl")
    for entry, record in zip(ledger, rounds, strict=True):
        unit = entry["interaction_level"]
        assert unit["devices_reporting"] == record["fit_sampled"] == 40
        assert 0 < unit["epsilon_min"] <= unit["epsilon_max"]
        assert unit["noise_multiplier_min"] == unit["noise_multiplier_max"] == 1.0
    first, second = (e["interaction_level"]["epsilon_max"] for e in ledger)
    assert second > first  # each user's accountant carried over, in its own state file
    config = json.loads((out / "config.json").read_text())
    assert config["cohort-size"] == 16
