"""The refit probe: a trained item model keeps its quality when users re-fit from scratch."""

import json

import numpy as np

from shared.models import build_model, global_arrays, global_names
from simulations.centralized import run_centralized
from simulations.research.refit_probe import main
from tests.simulations.test_centralized import learnable_config


def test_trained_item_model_beats_untrained_after_refit(tmp_path, capsys):
    config = learnable_config(tmp_path / "trained", eval_every=6)
    trained = run_centralized(config, echo=lambda _: None).path
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "config.json").write_text((trained / "config.json").read_text())
    model = build_model("mf", 1, 300, dim=config.embedding_dim, seed=config.seed)
    arrays = dict(zip(global_names(model), global_arrays(model), strict=True))
    np.savez(untrained / "global_model.npz", **arrays)

    results = {}
    for run in (trained, untrained):
        assert main([str(run), "--epochs", "5", "--lr", "0.05"]) == 0
        results[run.name] = json.loads(capsys.readouterr().out)
    # Only user rows are re-fitted: item quality decides. Random ranking of 1 + 99 is 0.1.
    assert results["trained"]["hr10"] > 0.3 > results["untrained"]["hr10"]
    assert results["trained"]["epochs"] == 5


def test_not_a_run_directory(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "is not a finished run" in capsys.readouterr().err
