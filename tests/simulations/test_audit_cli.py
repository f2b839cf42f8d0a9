"""`confide audit item-inference` from a config and from a run directory."""

import json

from simulations.cli import main
from tests.conftest import run_confide


def test_audit_from_config_writes_json_and_table(tmp_path):
    code, log = run_confide(
        "audit",
        "item-inference",
        "--config",
        "simulations/smoke.toml",
        "--out",
        str(tmp_path),
        "--cohorts",
        "5",
        "--users",
        "20",
        timeout=300,
    )
    assert code == 0, log[-2000:]
    report = json.loads((tmp_path / "audit.json").read_text())
    rows = {(r["cohort"], r["attack"]): r for r in report["rows"]}
    assert set(rows) == {
        (1, "direction"),
        (1, "norm"),
        (5, "direction"),
        (5, "norm"),
        (0, "popularity"),
    }
    assert all(r["users"] == 20 and 0 <= r["precision_mean"] <= 1 for r in rows.values())
    # without SecAgg+ the direction of one device's update gives its items away
    assert rows[1, "direction"]["precision_mean"] > 0.9
    assert "cohort sum (SecAgg+)" in log and "most popular items" in log


def test_audit_of_a_directory_that_is_no_run_fails_clearly(tmp_path, capsys):
    assert main(["audit", "item-inference", str(tmp_path)]) == 2
    assert "is not a finished run" in capsys.readouterr().err


def test_under_device_noise_the_cohort_sums_hold_the_devices_noise_and_give_less_away(tmp_path):
    from shared.config import resolve_config
    from simulations.research.audit import run_item_inference

    reports = {}
    for source in ("server", "devices"):
        config, _ = resolve_config(
            "simulations/smoke-device-noise.toml", [f"dp-noise-source={source}"], None
        )
        rows = run_item_inference(config, None, tmp_path / source, [5], max_users=20)
        reports[source] = {(r["cohort"], r["attack"]): r for r in rows}
    written = json.loads((tmp_path / "devices" / "audit.json").read_text())
    assert written["device_noise"]["min_survivors"] == 3
    assert json.loads((tmp_path / "server" / "audit.json").read_text())["device_noise"] is None
    noised, plain = reports["devices"][5, "direction"], reports["server"][5, "direction"]
    assert noised["view"] == "cohort sum, device-noised (SecAgg+)"
    assert plain["view"] == "cohort sum (SecAgg+)"
    # server noise is added after the sum, so the server's sum is exact and gives items away;
    # the devices' noise (z 1 at 3 survivors) is in the sum it sees
    popular = reports["devices"][0, "popularity"]["precision_mean"]
    assert plain["precision_mean"] > popular > noised["precision_mean"]
    assert noised["precision_mean"] < 0.6 * plain["precision_mean"]
