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
