import json

import numpy as np

from shared.models import build_model, global_names
from simulations.centralized import run_centralized
from simulations.cli import main
from tests.conftest import small_config


def learnable_config(out_dir, **changes):
    """A small MF run that learns in 6 centralized epochs (also the refit probe's trained run)."""
    values = dict(synthetic_users=150, synthetic_items=300, model="mf", centralized_epochs=6)
    values |= dict(eval_every=3, centralized_learning_rate=0.01, out_dir=str(out_dir))
    return small_config(**(values | changes))


def test_centralized_writes_run_directory_and_learns(tmp_path):
    config = learnable_config(tmp_path / "run")
    run_dir = run_centralized(config, echo=lambda _: None)
    files = {p.name for p in run_dir.path.iterdir()}
    assert {"config.json", "metrics.jsonl", "global_model.npz", "metrics.png"} <= files
    assert json.loads((run_dir.path / "config.json").read_text())["model"] == "mf"
    records = run_dir.records()
    assert [r["epoch"] for r in records] == list(range(1, 7))
    assert [r["epoch"] for r in records if "hr10" in r] == [3, 6]
    # random ranking of 1 + 99 gives HR@10 = 0.1; a model that learned does far better
    assert records[-1]["hr10"] > 0.3
    assert records[-1]["full_hr10"] <= records[-1]["hr10"]  # ranking all items is harder
    saved = np.load(run_dir.path / "global_model.npz")
    assert sorted(saved.files) == sorted(global_names(build_model("mf", 1, 300)))


def test_cli_reports_config_errors(capsys):
    assert main(["centralized", "--set", "model=bert"]) == 2
    assert "model must be one of" in capsys.readouterr().err
    assert main(["simulate", "--set", "num-rounds=3"]) == 2
    assert "unknown config key" in capsys.readouterr().err


def test_centralized_reports_beyond_accuracy_for_the_model_and_popularity(tmp_path):
    from shared.beyond_accuracy import BEYOND_ACCURACY, coverage, exposure_gini
    from shared.split import split_for
    from shared.training import popularity_lists

    config = learnable_config(tmp_path / "run")
    run_dir = run_centralized(config, echo=lambda _: None)
    figures = json.loads((run_dir.path / "beyond_accuracy.json").read_text())
    split = split_for(config)
    lists = popularity_lists(split)
    assert lists.shape == (split.num_users, 10)
    for user in (0, 7):  # never an item the user trained on
        assert not set(lists[user]) & set(split.user_train_items(user).tolist())
    popularity = figures["popularity"]
    assert popularity["coverage10"] == coverage(lists, split.num_items)
    assert popularity["exposure_gini10"] == exposure_gini(lists, split.num_items)
    for row in (figures["model"], popularity):
        assert set(BEYOND_ACCURACY) <= set(row)
        assert 0 < row["coverage10"] <= 1 and 0 <= row["exposure_gini10"] < 1
        assert row["novelty10"] > 0 and 0 < row["diversity10"] <= 2
    # one shared ranking shows few items: it covers less of the catalogue than a personal model
    assert popularity["coverage10"] < figures["model"]["coverage10"]
    # metrics.jsonl has the model's figures beside hr10, at every evaluation
    evaluated = [r for r in run_dir.records() if "hr10" in r]
    assert all(set(BEYOND_ACCURACY) <= set(r) for r in evaluated)
    assert {k: evaluated[-1][k] for k in BEYOND_ACCURACY} == {
        k: figures["model"][k] for k in BEYOND_ACCURACY
    }
