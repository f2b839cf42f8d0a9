"""The shipped device-noise smoke config end to end: real Ray simulation, SecAgg+, Skellam noise."""

import pytest

from shared import skellam
from tests.conftest import read_jsonl, run_confide


@pytest.mark.slow
def test_smoke_device_noise_runs_and_the_ledger_accounts_the_survivors_noise(tmp_path):
    out = tmp_path / "run"
    code, log = run_confide("simulate", "--config", "smoke-device-noise", "--out", str(out))
    assert code == 0, log[-3000:]
    assert "run status: finished:completed" in log
    records = read_jsonl(out / "metrics.jsonl")
    assert len(records) == 2, log[-3000:]
    ledger = read_jsonl(out / "privacy_ledger.jsonl")
    entries = []
    for record, entry in zip(records, ledger, strict=True):
        assert "skipped" not in record, record
        assert record["noise_clamped"] == 0 and record["secagg_clipped_fraction"] == 0.0
        user, secagg = entry["user_level"], entry["secure_aggregation"]
        assert user["noise_source"] == "devices" and user["status"] == "aggregated"
        assert user["survivors"] == record["secagg_survivors"] == secagg["survivors"] > 0
        assert user["mu_present"] == user["mu_device"] * user["survivors"]
        assert user["min_survivors"] == 3  # the reconstruction threshold (0 in the config)
        assert user["noise_multiplier"] == pytest.approx(1.0)
        entries.append((user["mu_present"], 0.5, user["l1_sensitivity"], user["l2_sensitivity"], 1))
        assert user["epsilon"] == pytest.approx(skellam.epsilon(entries, 1e-5), rel=1e-12)
        # c is a power of two: the devices' noised integers survive Flower's quantizer exactly
        assert secagg["clipping_range"] in (2.0**k for k in range(-4, 40))
    code, report = run_confide("report", str(out))
    assert code == 0, report[-2000:]
    privacy = __import__("json").loads((out / "privacy.json").read_text())
    assert privacy["user_level"]["noise_source"] == "devices"
    assert "noise_source" not in privacy["interaction_level"]  # off in this run


@pytest.mark.slow
def test_adaptive_clipping_with_device_noise_moves_s_from_the_devices_noised_count(tmp_path):
    """Real SecAgg+ and Ray: each device noises (update, clip bit) in SecAgg+'s integers; S
    starts far below every update norm, so the released fraction is noise around 0 and S grows;
    each round is accounted at its own S, and the report says the devices noised the count."""
    out = tmp_path / "adaptive"
    settings = {"dp-user-adaptive-clip": "true", "dp-user-clip-norm": 0.001}
    code, log = run_confide(
        "simulate", "--config", "smoke-device-noise", "--out", str(out), settings=settings
    )
    assert code == 0, log[-3000:]
    records = read_jsonl(out / "metrics.jsonl")
    ledger = [e["user_level"] for e in read_jsonl(out / "privacy_ledger.jsonl")]
    assert len(records) == 2 and not any("skipped" in r for r in records), records
    assert [u["clip_norm"] for u in ledger] == [r["clip_norm"] for r in records]
    assert ledger[0]["clip_norm"] == 0.001
    entries = []
    for unit, record in zip(ledger, records, strict=True):
        assert unit["noise_source"] == "devices" and unit["clip_adaptive"]
        assert record["noise_clamped"] == 0 and record["secagg_clipped_fraction"] == 0.0
        # every bit is 0: the fraction is the count's noise over 15, std 0.75 sqrt(15/3) / 15
        assert abs(unit["clip_fraction_under"]) < 6 * 0.75 * (15 / 3) ** 0.5 / 15
        assert unit["next_clip_norm"] != unit["clip_norm"]
        assert unit["update_noise_multiplier"] > unit["noise_multiplier"]
        entries.append((unit["mu_present"], 0.5, unit["l1_sensitivity"], unit["l2_sensitivity"], 1))
        assert unit["epsilon"] == pytest.approx(skellam.epsilon(entries, 1e-5), rel=1e-12)
    assert ledger[1]["clip_norm"] == pytest.approx(ledger[0]["next_clip_norm"])
    assert ledger[1]["l2_sensitivity"] != ledger[0]["l2_sensitivity"]  # its own S's terms
    code, report = run_confide("report", str(out))
    assert code == 0, report[-2000:]
    caveats = " ".join(__import__("json").loads((out / "privacy.json").read_text())["caveats"])
    assert "already noised by the devices" in caveats and "the server adds nothing" in caveats


@pytest.mark.slow
def test_device_noise_on_shards_repeats_one_device_per_node_under_secagg(tmp_path):
    """With the same seeds (reproducible noise: research only), two shards of 15 simulated
    users, each adding its own Skellam share, release what 30 devices under real SecAgg+
    release: the same cohorts, the same survivors and ε, the same global model to float
    rounding. So the shards' device-noise rows measure what a deployment would get."""
    import numpy as np

    runs = {}
    for name, settings in {
        "nodes": {},
        "shards": {"secagg": "false", "cohort-size": 15},
    }.items():
        out = tmp_path / name
        code, log = run_confide(
            "simulate",
            "--config",
            "smoke-device-noise",
            "--out",
            str(out),
            settings={"dp-reproducible-noise": "true", **settings},
        )
        assert code == 0, log[-3000:]
        runs[name] = out
    ledgers = {k: read_jsonl(v / "privacy_ledger.jsonl") for k, v in runs.items()}
    for a, b in zip(ledgers["nodes"], ledgers["shards"], strict=True):
        ua, ub = a["user_level"], b["user_level"]
        assert ua["survivors"] == ub["survivors"] > 0 and ua["sampled"] == ub["sampled"]
        assert ub["epsilon"] == ua["epsilon"] and ub["mu_present"] == ua["mu_present"]
        assert ub["noise_clamped"] == 0 and b["secure_aggregation"] == {"enabled": False}
    nodes = np.load(runs["nodes"] / "global_model.npz")
    shards = np.load(runs["shards"] / "global_model.npz")
    assert nodes.files == shards.files
    for key in nodes.files:
        np.testing.assert_allclose(shards[key], nodes[key], atol=1e-6, rtol=0)
    code, report = run_confide("report", str(runs["shards"]))
    assert code == 0, report[-2000:]
    caveats = " ".join(
        __import__("json").loads((runs["shards"] / "privacy.json").read_text())["caveats"]
    )
    assert "the server saw each shard's noised sum in the clear" in caveats
