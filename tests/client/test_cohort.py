"""The cohort engine gives every user of a shard what one user per node gives it (per-user
updates, private embeddings, losses, accountants), within float tolerance."""

import numpy as np
import pytest
import torch

from client import training_round
from client.cohort import ShardUser, StackedOptimizer, train_shard
from shared.models import global_arrays
from shared.privacy import PrivacyHistory
from shared.split import split_for
from shared.wire import BUDGET_EXHAUSTED, TRAINED
from tests.conftest import small_config

MODELS = ["neumf", "gmf", "mlp", "mf"]


def _shard(config, users):
    split = split_for(config)
    return [ShardUser(u, split.user_data(u)) for u in users]


def _alone(config, shard, server_round, params):
    return [
        training_round.train(config, u.data, u.user_id, server_round, params, u.private, u.history)
        for u in shard
    ]


def _assert_same(together, alone, atol=2e-5):
    assert len(together) == len(alone)
    for t, a in zip(together, alone, strict=True):
        assert t.status == a.status
        assert t.num_examples == a.num_examples
        for x, y in zip(t.global_arrays, a.global_arrays, strict=True):
            np.testing.assert_allclose(x, y, atol=atol, rtol=1e-4)
        assert sorted(t.private) == sorted(a.private)
        for name in t.private:
            np.testing.assert_allclose(t.private[name], a.private[name], atol=atol, rtol=1e-4)
        if np.isnan(a.loss):
            assert np.isnan(t.loss)
        else:
            assert t.loss == pytest.approx(a.loss, rel=1e-4, abs=1e-5)
        assert t.history == a.history
        assert t.epsilon == pytest.approx(a.epsilon)
        assert t.noise_multiplier == a.noise_multiplier


@pytest.mark.parametrize("model", MODELS)
def test_plain_shard_matches_one_user_per_node(model):
    config = small_config(model=model, local_epochs=2, batch_size=16)
    params = global_arrays(config.build_model(config.num_items or 200))
    shard = _shard(config, [0, 3, 7, 11])
    together = train_shard(config, shard, 2, params)
    _assert_same(together, _alone(config, shard, 2, params))
    # the updates really moved, and differently per user
    moved = [np.abs(t.global_arrays[0] - params[0]).sum() for t in together]
    assert min(moved) > 0 and len(set(np.round(moved, 6))) == len(moved)


@pytest.mark.parametrize("model", MODELS)
def test_dp_shard_matches_opacus_per_user(model):
    """Noise off (σ = 0) and q = 1 (every user's n <= batch-size): Opacus' run is deterministic,
    so per-interaction clipping, the 1/E[batch] scaling, the optimizer and the accountant's
    entries must agree user by user. The clip (C = 0.05) binds for most interactions."""
    config = small_config(
        model=model,
        dp_interaction=True,
        dp_max_grad_norm=0.05,
        local_epochs=2,
        batch_size=64,
        dp_reproducible_noise=True,
    ).replace(dp_noise_multiplier=0.0)
    params = global_arrays(config.build_model(200))
    shard = _shard(config, [1, 2, 5])
    assert all(len(u.data.train_items) <= config.batch_size for u in shard)
    _assert_same(train_shard(config, shard, 1, params), _alone(config, shard, 1, params))


def test_dp_shard_matches_opacus_with_batches_and_resumed_state():
    """Several Poisson steps per epoch (q < 1) with noise off cannot match draw for draw, but the
    accountant does, and a resumed private embedding and history are continued, per user."""
    config = small_config(dp_interaction=True, batch_size=4, local_epochs=1)
    params = global_arrays(config.build_model(200))
    base = _shard(config, [0, 4])
    earlier = PrivacyHistory().add(1.0, 0.5, 3)
    shard = [
        ShardUser(
            u.user_id,
            u.data,
            training_round.train(config, u.data, u.user_id, 1, params, None).private,
            earlier,
        )
        for u in base
    ]
    together = train_shard(config, shard, 2, params)
    alone = _alone(config, shard, 2, params)
    for t, a in zip(together, alone, strict=True):
        assert t.history == a.history and t.history.entries[0] == (1.0, 0.5, 3)
        assert t.epsilon == pytest.approx(a.epsilon) and t.noise_multiplier == a.noise_multiplier
        assert t.status == TRAINED and np.isfinite(t.loss)


def test_dp_noise_is_per_user_and_secret():
    """σ > 0: two runs of the same shard differ (secret seed), two users' noise differs."""
    config = small_config(dp_interaction=True, dp_noise_multiplier=2.0)
    params = global_arrays(config.build_model(200))
    shard = _shard(config, [0, 1])
    first = train_shard(config, shard, 1, params)
    second = train_shard(config, shard, 1, params)

    def update(result):
        return np.concatenate(
            [(a - p).ravel() for a, p in zip(result.global_arrays, params, strict=True)]
        )

    assert not np.allclose(update(first[0]), update(second[0]))
    assert not np.allclose(update(first[0]), update(first[1]))


def test_budget_cap_declines_per_user():
    config = small_config(dp_interaction=True, dp_epsilon_cap=50.0, local_epochs=1)
    params = global_arrays(config.build_model(200))
    shard = _shard(config, [0, 1])
    spent = PrivacyHistory().add(1.0, 1.0, 200)  # far past the cap
    shard = [shard[0], ShardUser(1, shard[1].data, None, spent)]
    together = train_shard(config, shard, 1, params)
    _assert_same([together[1]], _alone(config, shard[1:], 1, params))
    assert [r.status for r in together] == [TRAINED, BUDGET_EXHAUSTED]


def test_stacked_adam_matches_torch_adam_with_masked_users():
    torch.manual_seed(0)
    params = {"w": torch.randn(3, 5)}
    reference = [torch.nn.Parameter(params["w"][u].clone()) for u in range(3)]
    optimizers = [torch.optim.Adam([p], lr=0.1) for p in reference]
    stacked = StackedOptimizer("adam", params, 0.1)
    for step in range(4):
        grads = torch.randn(3, 5)
        active = torch.tensor([True, step % 2 == 0, True])
        users = [u for u in range(3) if active[u]]
        stacked.step({"w": grads}, active)
        for u in users:
            reference[u].grad = grads[u].clone()
            optimizers[u].step()
    for u in range(3):
        torch.testing.assert_close(params["w"][u], reference[u].detach())
