import numpy as np
import pytest
import torch

from shared.item_vectors import cosine_to, item_tables, item_vectors
from shared.models import MODELS, build_model


@pytest.mark.parametrize("name", MODELS)
def test_rows_are_unit_and_dot_is_mean_cosine_of_tables(name):
    model = build_model(name, 1, 25, seed=1)
    vectors = item_vectors(model, 25)
    assert np.allclose((vectors**2).sum(1), 1.0)
    params = dict(model.named_parameters())
    tables = [params[n].detach().double() for n in item_tables(model, 25)]
    expected = np.mean(
        [torch.nn.functional.cosine_similarity(t[3], t[[5, 7]], dim=-1).numpy() for t in tables],
        axis=0,
    )
    assert np.allclose(cosine_to(vectors, 3, np.array([5, 7])), expected)


def test_bias_and_user_tables_are_left_out():
    assert item_tables(build_model("mf", 25, 25, seed=0), 25) == ["item_embedding.weight"]


def test_model_without_item_table_is_refused():
    with pytest.raises(ValueError, match="no item embedding table"):
        item_vectors(torch.nn.Linear(3, 3), 3)
