"""`confide bench`: the rows it measures and the files it writes (no Flower rows: those are the
e2e runs' business; here the floors, one device after another and the cohort engine)."""

import json

import pytest

from simulations.bench import ROWS
from simulations.cli import main


def test_the_bench_writes_every_row_it_ran_as_a_ratio_to_the_floor(tmp_path):
    out = tmp_path / "bench"
    only = "per_device_plain,cohort_dp,per_device_pooled,cohort_pooled"
    code = main(["bench", "--config", "smoke", "--users", "6", "--only", only, "--out", str(out)])
    assert code == 0
    result = json.loads((out / "bench.json").read_text())
    names = [r["name"] for r in result["rows"]]
    assert names == [
        *("floor_plain", "floor_dp", "per_device_plain", "cohort_dp"),
        *("per_device_pooled", "cohort_pooled"),
    ]
    for row in result["rows"]:
        assert {"name", "users_per_s", "ratio_to_floor", "peak_rss_mb"} <= set(row)
        assert row["users"] == 6 and row["users_per_s"] > 0 and row["peak_rss_mb"] > 50
        assert row["users_per_s"] == pytest.approx(6 / row["seconds"], rel=1e-2)
    floors = {r["name"]: r for r in result["rows"] if r["name"].startswith("floor")}
    assert all(r["ratio_to_floor"] == 1.0 for r in floors.values())
    cohort = next(r for r in result["rows"] if r["name"] == "cohort_dp")
    assert cohort["ratio_to_floor"] == pytest.approx(
        floors["floor_dp"]["seconds"] / cohort["seconds"], rel=1e-3
    )
    pooled = next(r for r in result["rows"] if r["name"] == "cohort_pooled")  # to the DP floor
    assert pooled["ratio_to_floor"] == pytest.approx(
        floors["floor_dp"]["seconds"] / pooled["seconds"], rel=1e-3
    )
    assert (out / "bench.png").stat().st_size > 1000


def test_an_unknown_row_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--config", "smoke", "--only", "floor_plain,warp_drive"])
    err = capsys.readouterr().err.strip().splitlines()
    assert "unknown bench rows ['warp_drive']" in err[-1] and ROWS[0] in err[-1]
