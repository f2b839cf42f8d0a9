"""A shard's evaluation gives every user what its own device's evaluation gives it."""

import numpy as np
import pytest

from client import training_round
from client.cohort import ShardUser, train_shard
from client.shard_evaluation import evaluate_shard
from shared.models import global_arrays
from shared.split import split_for
from tests.conftest import small_config


@pytest.mark.parametrize("model", ["neumf", "gmf", "mlp", "mf"])
def test_shard_evaluation_matches_each_device(model):
    config = small_config(model=model, personalize_epochs=3, batch_size=16, local_epochs=1)
    split = split_for(config)
    params = global_arrays(config.build_model(split.num_items))
    users = [ShardUser(u, split.user_data(u)) for u in (0, 4, 9, 13, 21)]
    # a trained round first: saved private rows for some users, fresh ones for the others
    trained = train_shard(config, users[:3], 1, params)
    users = [
        ShardUser(u.user_id, u.data, r.private) for u, r in zip(users[:3], trained, strict=True)
    ] + users[3:]
    new_params = trained[0].global_arrays
    together = evaluate_shard(config, users, new_params, chunk_users=2)
    for user, got in zip(users, together, strict=True):
        want = training_round.evaluate(config, user.data, user.user_id, new_params, user.private)
        assert got.loss == pytest.approx(want.loss, rel=1e-4, abs=1e-5)
        assert set(got.metrics) == set(want.metrics)
        for key, value in want.metrics.items():
            assert got.metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
        np.testing.assert_array_equal(got.top, want.top)


def test_the_refit_moves_the_scores_and_is_not_kept():
    config = small_config(personalize_epochs=5)
    split = split_for(config)
    params = global_arrays(config.build_model(split.num_items))
    users = [ShardUser(u, split.user_data(u)) for u in range(4)]
    refit = evaluate_shard(config, users, params)
    plain = evaluate_shard(config.replace(personalize_epochs=0), users, params)
    assert any(a.loss != b.loss for a, b in zip(refit, plain, strict=True))
    assert all(u.private is None for u in users)  # nothing written back
