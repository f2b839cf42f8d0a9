"""End to end: `confide simulate` starts a SuperLink, runs `flwr run` on Ray, and stops it all."""

import json
import os
import re

import pytest

from shared.beyond_accuracy import BEYOND_ACCURACY
from tests.conftest import read_jsonl, run_confide


def test_two_round_simulation_on_synthetic_data(tmp_path):
    out = tmp_path / "run"
    code, log = run_confide(
        "simulate",
        "--config",
        "simulations/smoke.toml",
        "--out",
        str(out),
        settings={"synthetic-users": 20, "synthetic-items": 200},
    )
    assert code == 0, log[-3000:]
    assert "run status: finished:completed" in log

    records = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in records] == [1, 2]
    for record in records:
        assert record["fit_sampled"] == record["fit_replies"] == 20
        assert record["fit_rejected"] == 0 and "skipped" not in record
        assert record["eval_clients"] == 20
        assert 0.0 <= record["full_hr10"] <= record["hr10"] <= 1.0
        # every simulated device shared its list: 20 lists of 10 over a 200-item catalogue
        assert 10 / 200 <= record["coverage10"] <= 1.0 and 0 <= record["exposure_gini10"] < 1
        assert record["novelty10"] > 0 and 0 < record["diversity10"] <= 2
    beyond = json.loads((out / "beyond_accuracy.json").read_text())
    assert beyond["model"] == {"round": 2} | {k: records[-1][k] for k in BEYOND_ACCURACY}
    popularity = beyond["popularity"]
    assert set(popularity) == set(BEYOND_ACCURACY) and 0 < popularity["diversity10"] <= 2
    data = json.loads((out / "data.json").read_text())["baselines"]["popularity"]
    assert data["coverage10"] == popularity["coverage10"]
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "global_model.npz", "metrics.png", "data.json"} <= files
    assert json.loads((out / "config.json").read_text())["synthetic-users"] == 20
    assert "[confide] round 2/2" in log  # progress is shown while it runs

    # every process started for the run is gone: the SuperLink, by the PID it reported
    pid = int(re.search(r"SuperLink pid (\d+)", log).group(1))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
