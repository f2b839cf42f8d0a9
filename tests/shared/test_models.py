import numpy as np
import pytest
import torch

from shared.models import (
    MODELS,
    build_model,
    global_arrays,
    global_names,
    load_global,
    load_private,
    private_names,
    private_state,
)

# sasrec has no user rows (its user state is a sequence): tests/shared/test_sequence_model.py
NCF_MODELS = [m for m in MODELS if m != "sasrec"]


@pytest.mark.parametrize("name", NCF_MODELS)
def test_split_is_exact_and_user_rows_are_private(name):
    model = build_model(name, 5, 40, dim=8, mlp_layers=(16, 8), seed=0)
    names = global_names(model)
    assert names and all(not n.startswith("user_") for n in names)
    assert private_names(model) and all(n.startswith("user_") for n in private_names(model))
    assert set(names) | set(private_names(model)) == {n for n, _ in model.named_parameters()}
    # user rows never appear among the global arrays
    assert all(a.shape[0] != 5 or a.ndim == 1 for a in global_arrays(model))


@pytest.mark.parametrize("name", NCF_MODELS)
def test_round_trip_global_and_private(name):
    source = build_model(name, 1, 40, dim=8, mlp_layers=(16, 8), seed=1)
    target = build_model(name, 1, 40, dim=8, mlp_layers=(16, 8), seed=2)
    users, items = torch.zeros(40, dtype=torch.long), torch.arange(40)
    assert not torch.allclose(source(users, items), target(users, items))
    load_global(target, global_arrays(source))
    load_private(target, private_state(source))
    torch.testing.assert_close(target(users, items), source(users, items), rtol=0, atol=0)
    for a, b in zip(global_arrays(source), global_arrays(target), strict=True):
        np.testing.assert_array_equal(a, b)


def test_global_layout_independent_of_user_count():
    one = build_model("neumf", 1, 30, seed=0)
    many = build_model("neumf", 943, 30, seed=0)
    assert global_names(one) == global_names(many)
    assert [a.shape for a in global_arrays(one)] == [a.shape for a in global_arrays(many)]


def test_load_global_rejects_wrong_shape_and_count():
    model = build_model("gmf", 1, 30, dim=8, seed=0)
    arrays = global_arrays(model)
    with pytest.raises(ValueError, match="expects"):
        load_global(model, [np.zeros((31, 8), np.float32), *arrays[1:]])
    with pytest.raises(ValueError, match="global arrays"):
        load_global(model, arrays[:-1])


def test_seeded_build_is_reproducible_and_unknown_model_rejected():
    a, b = build_model("mf", 3, 20, seed=5), build_model("mf", 3, 20, seed=5)
    for x, y in zip(global_arrays(a), global_arrays(b), strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="choose one of"):
        build_model("bpr", 3, 20)
