"""End to end with both DP units: devices stop at their cap, a user-level cap ends the run,
and `confide report` shows it."""

import json

import pytest

from shared.privacy import epsilon
from tests.conftest import read_jsonl, run_confide


def test_dp_run_with_caps_and_report(tmp_path):
    out = tmp_path / "run"
    # q = 1 (every device every round), z = 2: user-level epsilon after 2 rounds is below the
    # cap, after 3 above it, so round 3 must not run.
    two, three = (epsilon([(2.0, 1.0, r)], 1e-5) for r in (2, 3))
    user_cap = (two + three) / 2
    code, log = run_confide(
        "simulate",
        "--config",
        "simulations/smoke-dp.toml",
        "--out",
        str(out),
        settings={
            "synthetic-users": 20,
            "synthetic-items": 200,
            "num-server-rounds": 3,
            "fraction-fit": 1.0,
            "dp-user-noise-multiplier": 2.0,
            "dp-user-epsilon-cap": user_cap,
            "dp-epsilon-cap": 9.0,
        },
    )
    assert code == 0, log[-3000:]
    ledger = read_jsonl(out / "privacy_ledger.jsonl")
    assert [e["round"] for e in ledger] == [1, 2, 3]
    assert ledger[1]["user_level"]["epsilon"] == pytest.approx(two, rel=1e-9)
    assert "stopped" in ledger[2] and "cap" in ledger[2]["stopped"]
    assert ledger[2]["user_level"]["epsilon"] == pytest.approx(two, rel=1e-9)  # no third round
    inter = [e["interaction_level"] for e in ledger[:2]]
    assert all(i["enabled"] and i["epsilon_max"] <= 9.0 for i in inter)
    assert inter[1]["devices_at_cap"] >= 1  # small devices (q = 1) pass 9.0 in round 2
    records = read_jsonl(out / "metrics.jsonl")
    assert records[1]["budget_exhausted"] == inter[1]["budget_exhausted"] >= 1
    assert "stopped" in records[2] and records[2]["fit_sampled"] == 0

    code, log = run_confide("report", str(out), timeout=120)
    assert code == 0, log
    privacy = json.loads((out / "privacy.json").read_text())
    assert privacy["user_level"]["enabled"] and privacy["interaction_level"]["enabled"]
    assert privacy["user_level"]["epsilon"] == pytest.approx(two, rel=1e-6)
    assert privacy["interaction_level"]["devices_at_cap"] >= 1
    assert privacy["interaction_level"]["epsilon_max"] <= 9.0
    html = (out / "report.html").read_text()
    assert f"{two:.3g}" in html and "cap" in html
