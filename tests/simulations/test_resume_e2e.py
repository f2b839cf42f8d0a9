"""End to end: `confide simulate` for 2 rounds, then `--resume` to 4, against 4 rounds run whole.

Both DP units on, `dp-reproducible-noise`, user-level sampling rate q = 1. Exactness needs q = 1:
with q < 1 the Poisson draw is keyed by Flower's node ids, which Flower draws at random in every
run (a resumed simulation is a new Flower run), so the same seed samples other users; Flower's
count-based sampler uses Python's unseeded `random`. With q = 1 the cohort is everyone, and the
devices' DP-SGD noise, negatives and the server's noise come from (seed, stream, user, round).
"""

import numpy as np
import pytest

from tests.conftest import read_jsonl, run_confide

SETTINGS = {
    "synthetic-users": 12,
    "synthetic-items": 120,
    "embedding-dim": 8,
    "mlp-layers": '"16,8"',
    "eval-every": 4,
    "local-epochs": 1,
    "dp-interaction": "true",
    "dp-noise-multiplier": 1.0,
    "dp-user": "true",
    "fraction-fit": 1.0,
    "dp-user-noise-multiplier": 1.0,
    "dp-user-clip-norm": 0.5,
    "dp-reproducible-noise": "true",
}


def _model(run):
    with np.load(run / "global_model.npz") as data:
        return {k: data[k] for k in data.files}


def test_a_resumed_simulation_reaches_the_uninterrupted_one(tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    code, log = run_confide(
        "simulate", "--out", str(whole), settings=SETTINGS | {"num-server-rounds": 4}
    )
    assert code == 0, log[-3000:]
    code, log = run_confide(
        "simulate", "--out", str(resumed), settings=SETTINGS | {"num-server-rounds": 2}
    )
    assert code == 0, log[-3000:]
    code, log = run_confide("simulate", "--resume", str(resumed), "--set", "num-server-rounds=4")
    assert code == 0, log[-3000:]
    assert "after round 2" in log

    want, got = _model(whole), _model(resumed)
    assert set(got) == set(want)
    for name in want:  # replies are summed in arrival order: equal to float rounding
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
    ledger, whole_ledger = (
        read_jsonl(resumed / "privacy_ledger.jsonl"),
        read_jsonl(whole / "privacy_ledger.jsonl"),
    )
    assert [e["round"] for e in ledger] == [1, 2, 3, 4]  # each round exactly once
    assert [r["round"] for r in read_jsonl(resumed / "metrics.jsonl")] == [1, 2, 3, 4]
    for mine, theirs in zip(ledger, whole_ledger, strict=True):
        assert mine["user_level"]["epsilon"] == pytest.approx(theirs["user_level"]["epsilon"])
        assert mine["user_level"]["rounds_accounted"] == theirs["user_level"]["rounds_accounted"]
        inter, inter_whole = mine["interaction_level"], theirs["interaction_level"]
        assert inter["epsilon_max"] == inter_whole["epsilon_max"]  # the devices' ε continued
        assert inter["epsilon_min"] == inter_whole["epsilon_min"]
    assert (
        ledger[-1]["interaction_level"]["epsilon_max"]
        > ledger[1]["interaction_level"]["epsilon_max"]
    )

    # A finished run says so and runs nothing; a changed shape is refused in one line.
    code, log = run_confide("simulate", "--resume", str(resumed), timeout=120)
    assert code == 0 and "finished all 4 rounds" in log, log[-2000:]
    code, log = run_confide(
        "simulate", "--resume", str(resumed), "--set", "embedding-dim=16", timeout=120
    )
    assert code == 2 and "other shapes" in log and "embedding-dim 8 -> 16" in log, log[-2000:]
