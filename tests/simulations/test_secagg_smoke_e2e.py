"""The shipped SecAgg+ smoke config end to end, with user-level DP, and a halted round under DP."""

import pytest

from shared.privacy import epsilon
from tests.conftest import read_jsonl, run_confide


@pytest.mark.slow
def test_smoke_secagg_runs_and_a_halted_round_is_in_the_ledger(tmp_path):
    out = tmp_path / "run"
    every_device = ",".join(str(i) for i in range(30))
    code, log = run_confide(
        "simulate",
        "--config",
        "simulations/smoke-secagg.toml",
        "--out",
        str(out),
        # round 1: every sampled device fails before sending its masked update: halted
        settings={"test-secagg-fault": f'"1:collect:{every_device}"'},
    )
    assert code == 0, log[-3000:]
    assert "run status: finished:completed" in log
    records = read_jsonl(out / "metrics.jsonl")
    assert len(records) == 2, log[-3000:]
    assert "halted at the collect stage" in records[0]["skipped"], records
    assert "skipped" not in records[1] and records[1]["secagg_clipped_fraction"] == 0.0
    assert records[1]["secagg_survivors"] == records[1]["fit_sampled"] > 0, records
    ledger = read_jsonl(out / "privacy_ledger.jsonl")
    assert ledger[0]["user_level"]["status"].startswith("skipped: secure aggregation halted")
    assert ledger[0]["secure_aggregation"]["enabled"]
    # the halted round is still accounted (conservative): two rounds at q = 0.5, z = 1
    assert ledger[1]["user_level"]["rounds_accounted"] == 2
    assert ledger[1]["user_level"]["epsilon"] == pytest.approx(epsilon([(1.0, 0.5, 2)], 1e-5))
    assert ledger[1]["user_level"]["status"] == "aggregated"


@pytest.mark.slow
def test_pooled_interaction_level_dp_runs_under_secagg(tmp_path):
    """Pooled DP-SGD under SecAgg+: the devices' gradient sums are masked, the server adds the
    noise to the unmasked sum; each device accounts one step at (σ 1, q 0.5) per round."""
    out = tmp_path / "pooled"
    pooled = {
        "dp-user": "false",
        "dp-interaction": "true",
        "dp-interaction-mode": "pooled",
        "dp-pooled-sample-rate": 0.5,
        "strategy": "fedadam",
        "server-learning-rate": 0.01,
        "clients-per-round": 10,
    }
    code, log = run_confide(
        "simulate", "--config", "simulations/smoke-secagg.toml", "--out", str(out), settings=pooled
    )
    assert code == 0, log[-3000:]
    records = read_jsonl(out / "metrics.jsonl")
    assert [r.get("secagg_survivors") for r in records] == [10, 10]
    assert not any("skipped" in r for r in records)
    assert records[0]["model_sha256"] != records[1]["model_sha256"]  # the model moved
    ledger = read_jsonl(out / "privacy_ledger.jsonl")
    for entry in ledger:
        unit = entry["interaction_level"]
        assert (unit["mode"], unit["noise_source"], unit["devices_reporting"]) == (
            "pooled",
            "server",
            10,
        )
        assert entry["secure_aggregation"]["enabled"]
    # clients-per-round 10 of 30: a device's ε counts the rounds it was in (1 or 2)
    eps = {round(epsilon([(1.0, 0.5, k)], 1e-5), 1) for k in (1, 2)}
    assert {ledger[1]["interaction_level"]["epsilon_max"]} <= eps


@pytest.mark.slow
def test_adaptive_clipping_under_secagg_moves_s_from_the_masked_count(tmp_path):
    """Real SecAgg+ with each device's clip bit as one more masked coordinate: S starts far
    below the devices' update norms, so nearly every bit is 0 and S must grow; the ledger shows
    the released fraction, z_Delta for the update and the accountant's ε at z."""
    out = tmp_path / "adaptive"
    settings = {"dp-user-adaptive-clip": "true", "dp-user-clip-norm": 0.001}
    smoke = "simulations/smoke-secagg.toml"
    code, log = run_confide("simulate", "--config", smoke, "--out", str(out), settings=settings)
    assert code == 0, log[-3000:]
    records = read_jsonl(out / "metrics.jsonl")
    assert not any("skipped" in r for r in records), records
    ledger = [e["user_level"] for e in read_jsonl(out / "privacy_ledger.jsonl")]
    assert [u["clip_norm"] for u in ledger] == [r["clip_norm"] for r in records]
    assert ledger[0]["clip_norm"] == 0.001
    for unit in ledger:
        assert unit["clip_adaptive"] and unit["clip_fraction_under"] < 0.5  # few within S
        assert unit["next_clip_norm"] > unit["clip_norm"]  # so S grows
        assert unit["update_noise_multiplier"] > unit["noise_multiplier"] == 1.0
    assert ledger[1]["clip_norm"] == pytest.approx(ledger[0]["next_clip_norm"])
    assert ledger[1]["epsilon"] == pytest.approx(epsilon([(1.0, 0.5, 2)], 1e-5))
