"""``confide audit membership`` end to end: canaries in one real Flower simulation, then the bound.

The positive control (no DP, item-sum so one device's update is not diluted) must show a leak:
ε lower bound >= 1. A user-level DP run at ε 1 must stay under its reported ε. Each is one real
simulation on Flower's engine (about a minute or two on 2 cores): marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations.cli import main

# A small population with a small catalogue, so that a canary's 20 items leave a mark.
SMALL_RUN = """
dataset = "synthetic"
synthetic-users = 30
synthetic-items = 120
eval-negatives = 20
model = "neumf"
num-server-rounds = 3
eval-every = 3
local-epochs = 2
strategy = "itemsum"
learning-rate = 0.01
audit-canary-items = 20
"""


def _audit(tmp_path: Path, name: str, *sets: str) -> dict:
    config = tmp_path / "run.toml"
    config.write_text(SMALL_RUN)
    out = tmp_path / name
    args = ["audit", "membership", "--config", str(config), "--canaries", "100", "--out", str(out)]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0
    result = json.loads((out / "audit.json").read_text())
    assert (out / "audit.md").read_text().startswith("| membership audit |")
    assert result["canaries"] == 100 and result["guesses"] == 50  # a quarter in, a quarter out
    assert 0 <= result["correct"] <= result["guesses"]
    assert result["confidence"] == 0.95
    return result


@pytest.mark.slow
def test_positive_control_without_dp_shows_the_leak(tmp_path):
    result = _audit(tmp_path, "no-dp")
    assert result["epsilon_reported"] is None and result["delta"] == 1e-5
    # seen: 46 of 50 right, bound 1.56 (45 of 100 included); 1 is the issue target
    assert result["epsilon_lower_bound"] >= 1.0, result
    assert result["mean_score_included"] > result["mean_score_excluded"]


@pytest.mark.slow
def test_user_level_dp_run_stays_under_its_reported_epsilon(tmp_path):
    result = _audit(
        tmp_path,
        "dp-user",
        "dp-user=true",
        "dp-user-target-epsilon=1.0",
        "fraction-fit=0.5",
        "dp-user-clip-norm=0.5",
    )
    assert result["epsilon_reported"] is not None and result["epsilon_reported"] <= 1.0 + 1e-6
    assert result["delta"] == 1e-5
    assert result["epsilon_lower_bound"] < result["epsilon_reported"], result


def test_membership_audit_without_canaries_is_refused_in_one_line(tmp_path, capsys):
    assert main(["audit", "membership", "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "confide: config error: the membership audit needs canaries: pass --canaries M "
        "(or set audit-canaries)"
    ]
    assert main(["audit", "membership", "--canaries", "10", "--guess-fraction", "0.7"]) == 2
    assert "--guess-fraction must be in (0, 0.5]" in capsys.readouterr().err


def test_auditing_a_run_without_canaries_is_refused(tmp_path, capsys):
    run = tmp_path / "plain"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"kind": "federated", "seed": 0}))
    assert main(["audit", "membership", str(run)]) == 2
    assert "needs config.json and global_model.npz" in capsys.readouterr().err
