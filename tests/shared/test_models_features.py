"""Public item features in every model family (Wide & Deep): the layout without them is today's,
the feature matrix never crosses the wire, and the features really move the scores."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.config import ConfigError, RunConfig
from shared.defaults import default_values
from shared.models import (
    MODELS,
    build_model,
    global_arrays,
    global_names,
    load_global,
    private_names,
    private_state,
)
from shared.split import item_features_for, split_for

FIXTURES = Path(__file__).parents[1] / "fixtures"
NCF_MODELS = [m for m in MODELS if m != "sasrec"]  # sasrec: item-features refused for now
FEATURES = np.eye(6, 4, dtype=np.float32)  # 6 items, 4 features


@pytest.mark.parametrize("name", NCF_MODELS)
def test_without_features_layout_and_values_are_unchanged(name):
    plain = build_model(name, 1, 6, seed=3)
    rich = build_model(name, 1, 6, seed=3, item_features=FEATURES)
    assert global_names(plain) == [n for n in global_names(rich) if not n.startswith("features_")]
    # the embeddings are drawn before the feature parts: same initial model where they overlap
    rich_params = dict(rich.named_parameters())
    for n, p in plain.named_parameters():
        assert torch.equal(p, rich_params[n]), n
    assert not hasattr(plain, "features_deep")


@pytest.mark.parametrize("name", NCF_MODELS)
def test_feature_matrix_is_public_data_not_a_parameter_and_the_split_round_trips(name):
    model = build_model(name, 1, 6, seed=0, item_features=FEATURES)
    names = global_names(model)
    assert any(n.startswith("features_deep.") for n in names) and "features_wide.weight" in names
    assert all(not n.startswith("features_") for n in private_names(model))
    assert "item_features" not in model.state_dict()  # never checkpointed or sent
    assert sum(a.size for a in global_arrays(model)) == sum(
        p.numel() for n, p in model.named_parameters() if n in names
    )
    other = build_model(name, 1, 6, seed=9, item_features=FEATURES)
    load_global(other, global_arrays(model))
    for a, b in zip(global_arrays(other), global_arrays(model), strict=True):
        assert np.array_equal(a, b)
    assert set(private_state(other)) == set(private_names(model))


@pytest.mark.parametrize("name", NCF_MODELS)
def test_features_move_the_scores_of_items_with_equal_embeddings(name):
    model = build_model(name, 1, 6, seed=0, item_features=FEATURES)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param_name.startswith("item_") and param.shape[0] == 6:
                param[1] = param[0]  # items 0 and 1: same embeddings, different features
        for layer in model.features_deep.values():
            layer.weight.zero_()
        model.features_wide.weight.copy_(torch.tensor([[2.0, -2.0, 0.0, 0.0]]))
    scores = model.score_all_items(0)
    assert scores[0] - scores[1] == pytest.approx(4.0, abs=1e-5)  # the wide part alone
    with torch.no_grad():
        model.features_wide.weight.zero_()
        for layer in model.features_deep.values():
            layer.weight.normal_()
    scores = model.score_all_items(0)
    assert not torch.isclose(scores[0], scores[1])  # the deep part alone


def test_wrong_feature_rows_are_refused():
    with pytest.raises(ValueError, match="one row per item"):
        build_model("neumf", 1, 7, item_features=FEATURES)


def _config(**changes) -> RunConfig:
    values = default_values() | {"dataset": "ml-100k", "eval-negatives": 2} | changes
    return RunConfig.from_mapping(values)


def test_movielens_features_land_on_the_split_dense_ids(tmp_path):
    shutil.copy(FIXTURES / "ml100k" / "u.data", tmp_path / "u.data")
    genres = {5: 1, 7: 2, 10: 3, 20: 4}  # raw item -> its one genre column (item 100: no row)
    lines = [
        f"{raw}|Film {raw} (1990)|01-Jan-1990||http://x|"
        + "|".join("1" if g == col else "0" for g in range(19))
        for raw, col in genres.items()
    ]
    (tmp_path / "u.item").write_text("\n".join(lines) + "\n", encoding="latin-1")
    config = _config(**{"data-dir": str(tmp_path), "item-features": "movielens"})
    features = item_features_for(config)
    split = split_for(config)
    assert features.shape == (split.num_items, 19 + 2 + 1)
    assert features[:, -1].sum() == 1  # raw item 100 has no catalogue row: the missing flag
    model = config.build_model(split.num_items)
    assert model.item_features is not None and model.item_features.shape[0] == split.num_items


def test_movielens_features_need_a_movielens_dataset():
    with pytest.raises(ConfigError, match="item-features"):
        RunConfig.from_mapping(default_values() | {"item-features": "movielens"})


def test_sasrec_refuses_item_features_until_it_has_them():
    with pytest.raises(ConfigError, match="not built for sasrec"):
        _config(**{"model": "sasrec", "data-dir": "x", "item-features": "features.csv"})
