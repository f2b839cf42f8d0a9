"""SASRec federated end to end under every user-level mechanism: dp-user and SecAgg+."""

import numpy as np
import pytest

from shared.config import RunConfig
from shared.defaults import default_values
from shared.models import global_names
from tests.conftest import read_jsonl, run_confide


@pytest.mark.slow
def test_sasrec_runs_under_user_level_dp_and_secagg(tmp_path):
    out = tmp_path / "run"
    code, log = run_confide(
        "simulate",
        "--config",
        "simulations/smoke-secagg.toml",
        "--out",
        str(out),
        settings={"model": '"sasrec"', "sequence-length": 20},
    )
    assert code == 0, log[-3000:]
    assert "run status: finished:completed" in log
    ledger = read_jsonl(out / "privacy_ledger.jsonl")
    assert [r["user_level"]["status"] for r in ledger] == ["aggregated", "aggregated"]
    assert all(r["secure_aggregation"]["enabled"] for r in ledger)
    records = read_jsonl(out / "metrics.jsonl")
    assert all(0 <= r["hr10"] <= 1 for r in records), records
    # the server's model is the global part only: no user row, no sequence
    saved = np.load(out / "global_model.npz").files
    config = RunConfig.from_mapping(default_values() | {"model": "sasrec", "sequence-length": 20})
    assert sorted(saved) == sorted(global_names(config.build_model(300)))
    assert not any(n.startswith("user_") or "sequence" in n for n in saved)
