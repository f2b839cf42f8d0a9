"""The privacy report: golden values from small hand-written run directories."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from server.report import (
    CAVEATS,
    INTERACTION_UNIT,
    OUTPUTS,
    USER_UNIT,
    ReportError,
    build_report,
    main,
)
from simulations.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = {"opacus": "1.6.0", "flwr": "1.42.0", "torch": "2.13.0"}
BASE_CONFIG = {
    "kind": "federated",
    "model": "neumf",
    "dataset": "ml-100k",
    "seed": 0,
    "num-server-rounds": 3,
    "clients-per-round": 0,
    "fraction-fit": 0.1,
    "local-epochs": 1,
    "batch-size": 64,
}
METRICS = [
    {"round": 1, "fit_sampled": 104, "fit_replies": 101, "fit_rejected": 0, "train_loss": 0.6},
    {"round": 2, "fit_sampled": 99, "fit_replies": 99, "fit_rejected": 1, "train_loss": 0.5}
    | {"hr10": 0.412, "ndcg10": 0.2231, "full_hr10": 0.0512, "full_ndcg10": 0.0247},
    {"round": 3, "fit_sampled": 97, "fit_replies": 97, "fit_rejected": 0, "train_loss": 0.4},
]
OFF = {"enabled": False}


def interaction(eps_min, eps_median, eps_max, at_cap=0):
    return {
        "enabled": True,
        "accountant": "rdp",
        "noise_multiplier": 1.1,
        "max_grad_norm": 1.0,
        "delta": 1e-5,
        "epsilon_cap": 8.0,
        "sampling": "poisson",
        "devices_reporting": 97,
        "epsilon_min": eps_min,
        "epsilon_median": eps_median,
        "epsilon_max": eps_max,
        "devices_at_cap": at_cap,
        "budget_exhausted": 0,
        "sample_rate_median": 0.3,
        "steps_median": 10,
    }


def user(eps, rounds, status="aggregated", sampled=104, replied=104):
    return {
        "enabled": True,
        "accountant": "rdp",
        "noise_multiplier": 1.0,
        "clip_norm": 1.0,
        "sample_rate": 0.106,
        "population": 943,
        "expected_cohort": 100.0,
        "sampled": sampled,
        "replied": replied,
        "noise_stddev": 0.01,
        "sampling": "poisson",
        "delta": 1e-5,
        "epsilon": eps,
        "rounds_accounted": rounds,
        "status": status,
    }


def make_run(tmp_path, name, config=None, ledger=None, metrics=METRICS):
    run = tmp_path / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps(BASE_CONFIG | (config or {})))
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if ledger is not None:
        lines = [line if isinstance(line, str) else json.dumps(line) for line in ledger]
        (run / "privacy_ledger.jsonl").write_text("\n".join(lines) + "\n")
    return run


def ledger_line(rnd, inter, usr):
    return {
        "round": rnd,
        "interaction_level": inter,
        "user_level": usr,
        "library_versions": VERSIONS,
    }


@pytest.fixture
def both_on(tmp_path):
    # The interaction-level max falls in round 3 (other devices reported): the report keeps 3.2.
    ledger = [
        ledger_line(1, interaction(0.5, 0.9, 1.2), user(1.1, 1, sampled=104, replied=101)),
        ledger_line(2, interaction(0.7, 1.5, 3.2, at_cap=2), user(1.7, 2, "skipped: 1 reply")),
        ledger_line(3, interaction(0.8, 1.9, 2.9, at_cap=1), user(2.3, 3)),
    ]
    dp = {"dp-interaction": True, "dp-user": True, "model": "<script>alert(1)</script>"}
    return make_run(tmp_path, "both-on", dp, ledger)


def _report(run):
    assert main(run) == 0
    privacy = json.loads((run / "privacy.json").read_text())
    assert privacy == json.loads(json.dumps(build_report(run)))
    return privacy, (run / "report.html").read_text()


def test_both_units_on(both_on, capsys):
    privacy, page = _report(both_on)
    inter, usr = privacy["interaction_level"], privacy["user_level"]
    assert inter["enabled"] and inter["unit"] == INTERACTION_UNIT
    assert (inter["epsilon_max"], inter["epsilon_max_round"]) == (3.2, 2)  # the running max
    assert (inter["epsilon_median"], inter["epsilon_min"], inter["stats_round"]) == (1.9, 0.8, 3)
    assert inter["devices_at_cap"] == 2 and inter["sampling"] == "Poisson (Opacus)"
    assert (inter["delta"], inter["accountant"], inter["rounds_accounted"]) == (1e-5, "RDP", 3)
    assert usr["enabled"] and usr["unit"] == USER_UNIT
    assert (usr["epsilon"], usr["rounds_accounted"], usr["rounds_skipped"]) == (2.3, 3, 1)
    assert (usr["sample_rate"], usr["noise_multiplier"], usr["clip_norm"]) == (0.106, 1.0, 1.0)
    assert privacy["utility"] == {
        "round": 2,
        "hr10": 0.412,
        "ndcg10": 0.2231,
        "full_hr10": 0.0512,
        "full_ndcg10": 0.0247,
        "coverage10": None,  # rows of a run from before the lists were recorded
        "novelty10": None,
        "diversity10": None,
        "exposure_gini10": None,
        "popularity": None,  # no data.json: no pooled data, no popularity ranking
    }
    assert privacy["run"]["rounds_completed"] == 3 and privacy["run"]["fraction_fit"] == 0.1
    assert privacy["run"]["stopped"] is None and privacy["library_versions"] == VERSIONS
    caveats = " ".join(privacy["caveats"])
    for present in ("#819", "#571", "rounds its ε", "its sampled negatives", "DP-FedAvg"):
        assert present in caveats
    for present in ("fixed denominator", "running max", "sent no usable update", "composed round"):
        assert present in caveats
    for absent in (
        "group privacy",
        "No differential privacy",
        "stopped early",
        "not Poisson",
        "exceeds",
    ):
        assert absent not in caveats
    for text in ("3.2", "1.9", "0.8", "2.3", "1e-05", "RDP (Opacus 1.6.0)", "0.412", "0.0247"):
        assert text in page
    assert INTERACTION_UNIT in page and USER_UNIT in page
    assert "Poisson (Opacus)" in page and "What is protected" in page
    # Escaped, self-contained, the caveats listed as they apply.
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "http://" not in page and "https://" not in page and "data:image/png;base64," in page
    assert "opacus issue #819" in page and "group privacy" not in page
    assert "Interaction-level DP" in capsys.readouterr().out


def test_png_is_valid(both_on):
    main(both_on)
    import matplotlib.image

    data = (both_on / "privacy.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    height, width, _ = matplotlib.image.imread(both_on / "privacy.png").shape
    assert width > 400 and height > 200


def test_only_interaction_level(tmp_path):
    ledger = [
        ledger_line(1, interaction(0.4, 0.6, 1.0), OFF),
        ledger_line(2, interaction(0.6, 1.25, 1.76), OFF),
    ]
    run = make_run(tmp_path, "inter", {"dp-interaction": True}, ledger, METRICS[:2])
    privacy, page = _report(run)
    assert privacy["interaction_level"]["epsilon_max"] == 1.76
    assert privacy["user_level"] == {"enabled": False, "unit": USER_UNIT}
    caveats = " ".join(privacy["caveats"])
    assert "group privacy" in caveats and "#819" in caveats
    for absent in ("running max", "DP-FedAvg", "fixed denominator", "composed round", "exceeds"):
        assert absent not in caveats
    assert "replay the noise" not in caveats  # secret DP randomness: the default
    assert "1.76" in page and "1.25" in page and "DP-FedAvg" not in page
    assert "Off in this run" in page


def test_reproducible_noise_voids_the_claim_against_seed_holders(tmp_path):
    ledger = [ledger_line(1, interaction(0.4, 0.6, 1.0), OFF)]
    config = {"dp-interaction": True, "dp-reproducible-noise": True}
    privacy, page = _report(make_run(tmp_path, "seeded", config, ledger, METRICS[:1]))
    assert "replay the noise and remove it" in " ".join(privacy["caveats"])
    assert "replay the noise and remove it" in page


def test_both_off_without_ledger(tmp_path):
    run = make_run(tmp_path, "no-dp", {"fraction-fit": 1.0})
    privacy, page = _report(run)
    assert privacy["interaction_level"] == {"enabled": False, "unit": INTERACTION_UNIT}
    assert privacy["user_level"] == {"enabled": False, "unit": USER_UNIT}
    assert privacy["caveats"] == [CAVEATS["no_dp"]] and privacy["library_versions"] == {}
    assert "no ε is claimed" in page and "#819" not in page
    assert (run / "privacy.png").read_bytes().startswith(b"\x89PNG")


def test_config_on_but_ledger_missing_claims_nothing(tmp_path):
    run = make_run(tmp_path, "mismatch", {"dp-user": True})
    privacy = build_report(run)
    assert not privacy["user_level"]["enabled"]
    assert any("config.json turns user-level DP on" in c for c in privacy["caveats"])


def test_early_stop_by_user_level_cap(tmp_path):
    reason = "user-level epsilon cap 8.0 reached"
    ledger = [
        ledger_line(1, OFF, user(5.01, 1)),
        ledger_line(2, OFF, user(8.04, 2)),
        {"round": 2, "stopped": reason},
    ]
    config = {"dp-user": True, "dp-user-epsilon-cap": 8.0, "num-server-rounds": 10}
    run = make_run(tmp_path, "stopped", config, ledger, METRICS[:2])
    privacy, page = _report(run)
    assert privacy["run"]["stopped"] == reason and privacy["run"]["rounds_completed"] == 2
    assert privacy["user_level"]["epsilon"] == 8.04 and privacy["user_level"]["epsilon_cap"] == 8.0
    assert privacy["interaction_level"]["enabled"] is False
    assert CAVEATS["stopped"].format(r=2, why=reason) in privacy["caveats"]
    assert CAVEATS["over_cap"].format(unit="user-level", eps="8.04", cap="8") in privacy["caveats"]
    assert "8.04" in page and reason in page and "2 of 10" in page
    assert "replies rejected by validation: 1" in " ".join(privacy["caveats"])
    for absent in ("composed round", "#819", "running max"):
        assert absent not in " ".join(privacy["caveats"])


def test_ledger_as_the_strategy_writes_it(tmp_path):
    # The writer marks the stop inside a full entry; σ may be calibrated to a target ε instead.
    calibrated = {"noise_multiplier": None, "target_epsilon": 4.0}
    stopped = {"stopped": "user-level epsilon cap 3 reached (epsilon 2.91 after 1 rounds)"}
    sigmas = {"noise_multiplier_min": 1.3, "noise_multiplier_median": 2.0}
    ledger = [
        ledger_line(
            1,
            interaction(0.3, 0.5, 0.7) | calibrated | sigmas | {"noise_multiplier_max": 2.9},
            user(2.91, 1),
        ),
        ledger_line(
            2,
            interaction(0.4, 0.6, 0.7)
            | calibrated
            | {
                "noise_multiplier_min": 1.2,
                "noise_multiplier_median": 2.2,
                "noise_multiplier_max": 2.5,
            },
            user(2.91, 1),
        ),
        ledger_line(3, interaction(None, None, None) | calibrated, user(2.91, 1, "stopped", 0, 0))
        | stopped,
    ]
    run = make_run(tmp_path, "writer", {"dp-user": True, "dp-interaction": True}, ledger)
    privacy, page = _report(run)
    inter_out, user_out = privacy["interaction_level"], privacy["user_level"]
    assert (inter_out["epsilon_max"], inter_out["stats_round"], inter_out["target_epsilon"]) == (
        0.7,
        2,
        4.0,
    )
    # σ over the run: the smallest and largest any device used, the median of the last round
    sigma = [inter_out[f"noise_multiplier_{k}"] for k in ("min", "median", "max")]
    assert sigma == [1.2, 2.2, 2.9] and "1.2 / 2.2 / 2.9" in page
    assert user_out["epsilon"] == 2.91 and user_out["rounds_skipped"] == 0
    assert privacy["run"]["stopped"] == stopped["stopped"] and "Target ε" in page


@pytest.mark.parametrize(
    "bad, where",
    [
        ("{not json", "privacy_ledger.jsonl:2"),
        ('{"round": 2, "interaction_level": {"enabled": true, "epsilon_max": "3"}}', ":2"),
        ("[1, 2]", "privacy_ledger.jsonl:2"),
    ],
)
def test_malformed_ledger_line_writes_nothing(tmp_path, capsys, bad, where):
    run = make_run(tmp_path, "bad", {"dp-user": True}, [ledger_line(1, OFF, user(1.0, 1)), bad])
    assert main(run) == 2
    err = capsys.readouterr().err
    assert where in err and "privacy_ledger.jsonl" in err
    assert not any((run / name).exists() for name in OUTPUTS)


def test_missing_run_dir_and_cli(tmp_path, capsys, both_on):
    assert cli_main(["report", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    (both_on / "config.json").unlink()
    assert cli_main(["report", str(both_on)]) == 2
    assert "config.json" in capsys.readouterr().err
    run = make_run(tmp_path, "cli", {}, None)
    assert cli_main(["report", str(run)]) == 0 and (run / "report.html").exists()


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs /usr/bin/chromium")
def test_rendered_in_chromium(both_on, tmp_path):
    main(both_on)
    shot = tmp_path / "screen.png"
    script = ROOT / "simulations" / "research" / "render_report.py"
    cmd = [sys.executable, str(script), str(both_on), "--png", str(shot)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert shot.read_bytes().startswith(b"\x89PNG")
    # A page without the ε values fails the check.
    page = both_on / "report.html"
    page.write_text(page.read_text().replace("2.3", "x.x"))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "2.3" in done.stderr


def test_render_script_needs_a_report(tmp_path):
    script = ROOT / "simulations" / "research" / "render_report.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True)
    assert done.returncode == 1 and b"confide report" in done.stderr


def test_noise_source_names_who_added_the_noise(both_on, tmp_path):
    privacy, _ = _report(both_on)  # a ledger from before noise_source: the server added it
    assert privacy["user_level"]["noise_source"] == "server"
    assert privacy["interaction_level"]["noise_source"] == "device-local"
    assert "not against the server" in " ".join(privacy["caveats"])
    device = user(1.4, 1) | {
        "accountant": "skellam-rdp",
        "noise_source": "devices",
        "mu_device": 2.0e12,
        "min_survivors": 4,
        "survivors": 9,
        "mu_present": 1.8e13,
        "noise_clamped": 0,
        "clamp_probability": 1e-30,
        "clamp_delta": 2e-29,
    }
    run = make_run(tmp_path, "devices", {"dp-user": True}, [ledger_line(1, OFF, device)])
    usr = _report(run)[0]["user_level"]
    assert usr["noise_source"] == "devices" and usr["survivors_min"] == 9
    assert usr["holds_against"].startswith("released models and a semi-honest server")
    caveats = " ".join(_report(run)[0]["caveats"])
    assert "AND a semi-honest server" in caveats and "not against the server" not in caveats
    assert "0 coordinates were clamped" in caveats


def test_beyond_accuracy_is_reported_beside_the_popularity_ranking(tmp_path):
    figures = {"coverage10": 0.51, "novelty10": 2.48, "diversity10": 0.66, "exposure_gini10": 0.8}
    metrics = [{"round": 1, "eval_clients": 3, "hr10": 0.6, "ndcg10": 0.3} | figures]
    run = make_run(tmp_path, "lists", metrics=metrics)
    popularity = {"hr10": 0.42, "coverage10": 0.054, "novelty10": 1.19, "exposure_gini10": 0.986}
    (run / "data.json").write_text(json.dumps({"baselines": {"popularity": popularity}}))
    (run / "beyond_accuracy.json").write_text(json.dumps({"popularity": {"diversity10": 0.5}}))
    privacy, page = _report(run)
    utility = privacy["utility"]
    assert {k: utility[k] for k in figures} == figures
    assert utility["popularity"] == popularity | {"diversity10": 0.5}
    assert "Beyond accuracy" in page and "0.986" in page and "0.054" in page


def test_a_malformed_data_summary_is_named(tmp_path):
    run = make_run(tmp_path, "bad-data")
    (run / "data.json").write_text("{not json")
    with pytest.raises(ReportError, match="data.json:1: malformed JSON"):
        build_report(run)


def test_a_pooled_run_says_the_server_added_the_noise_and_is_trusted(tmp_path):
    pooled = interaction(0.4, 0.4, 0.4) | {
        "mode": "pooled",
        "noise_source": "server",
        "noise_stddev": 0.9,
        "sample_rate_rule": "dp-pooled-sample-rate 0.1 for every device",
    }
    run = make_run(tmp_path, "pooled", {"dp-interaction": True}, [ledger_line(1, pooled, OFF)])
    privacy, page = _report(run)
    inter = privacy["interaction_level"]
    assert (inter["mode"], inter["noise_source"]) == ("pooled", "server")
    assert inter["holds_against"] == "released models (the server adds the noise: trusted)"
    caveats = " ".join(privacy["caveats"])
    assert "Pooled interaction-level DP" in caveats and "NOT against the server" in caveats
    assert "opacus issue #819" not in caveats  # a fixed denominator: that caveat is local-only
    assert "The server is trusted" in page and "pooled / server" in page
    # a ledger from before the mode existed reads as local epochs, noised on the device
    older = _report(
        make_run(
            tmp_path,
            "older",
            {"dp-interaction": True},
            [ledger_line(1, interaction(0.4, 0.4, 0.4), OFF)],
        )
    )[0]
    assert older["interaction_level"]["mode"] == "local-epochs"
    assert older["interaction_level"]["holds_against"].endswith("noises its own updates)")
