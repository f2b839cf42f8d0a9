"""On-device DP-SGD: ghost clipping equals Opacus' default, accounting persists, budget cap."""

import copy

import numpy as np
import pytest
import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader

from client import training_round
from client.dp import GroupedBCE, GroupScorer, InteractionGroups, plan_round, private_step
from shared.models import build_model, global_arrays
from shared.privacy import PrivacyHistory, epsilon
from shared.split import UserData, split_for
from shared.wire import BUDGET_EXHAUSTED, TRAINED
from tests.conftest import small_config


def _one_clipped_step(model, data, mode):
    """One noise-free DP-SGD step over a fixed batch (no Poisson sampling: same batch in both)."""
    torch.manual_seed(0)
    dataset = InteractionGroups(data, negatives=4)
    dataset.resample(np.random.default_rng(0))
    engine = PrivacyEngine()
    module, optimizer, *rest = engine.make_private(
        module=GroupScorer(model),
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        criterion=GroupedBCE(),
        data_loader=DataLoader(dataset, batch_size=len(dataset)),
        noise_multiplier=0.0,
        max_grad_norm=0.05,  # small enough that most per-sample gradients are clipped
        poisson_sampling=False,
        grad_sample_mode=mode,
    )
    loader = rest[-1]
    criterion = rest[0] if mode == "ghost" else GroupedBCE()
    items, labels = next(iter(loader))
    optimizer.zero_grad()
    criterion(module(items), labels).backward()
    optimizer.step()
    return dict(model.named_parameters())


def _small_user() -> UserData:
    """10 training positives among 40 items."""
    return UserData(
        num_items=40,
        train_items=np.arange(0, 30, 3),
        test_item=1,
        eval_negatives=np.arange(2, 40, 4),
    )


@pytest.mark.parametrize("name", ["neumf", "mf"])
def test_ghost_clipping_update_equals_default_mode(name):
    data = _small_user()
    base = build_model(name, 1, 40, dim=8, mlp_layers=(16, 8), seed=3)
    for p in base.parameters():  # larger weights: gradients well above the clip norm
        p.data.mul_(20)
    hooks = _one_clipped_step(copy.deepcopy(base), data, "hooks")
    ghost = _one_clipped_step(copy.deepcopy(base), data, "ghost")
    before = dict(base.named_parameters())
    for key in before:
        update_hooks = hooks[key] - before[key]
        assert update_hooks.abs().max() > 0  # the step did something
        torch.testing.assert_close(ghost[key] - before[key], update_hooks, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_empty_poisson_batch_is_a_noise_only_step(sigma):
    """(1 - q)^n of the steps see no sample; they must still be noised and counted."""
    data = _small_user()
    model = build_model("neumf", 1, 40, dim=8, mlp_layers=(16, 8), seed=3)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    dataset = InteractionGroups(data, negatives=4)
    dataset.resample(np.random.default_rng(0))
    engine = PrivacyEngine()
    module, optimizer, criterion, loader = engine.make_private(
        module=GroupScorer(model),
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        criterion=GroupedBCE(),
        data_loader=DataLoader(dataset, batch_size=4),
        noise_multiplier=sigma,
        max_grad_norm=1.0,
        poisson_sampling=True,
        grad_sample_mode="ghost",
    )
    items, labels = next(iter(loader))
    empty = (items[:0], labels[:0])
    assert private_step(module, optimizer, criterion, *empty) is None
    for key, param in model.named_parameters():
        moved = (param.detach() - before[key]).abs().max()
        assert (moved > 0) if sigma else (moved == 0), key  # noise, and only noise
    assert engine.accountant.history == [(sigma, pytest.approx(1 / 3), 1)]  # q = 1 / len(loader)
    assert np.isfinite(private_step(module, optimizer, criterion, items, labels))


def _dp_config(**changes):
    return small_config(
        dp_interaction=True,
        dp_noise_multiplier=1.0,
        dp_max_grad_norm=1.0,
        local_epochs=2,
        batch_size=8,
        **changes,
    )


def test_device_epsilon_composes_over_rounds_and_matches_one_accountant():
    config = _dp_config()
    split = split_for(config)
    data = split.user_data(2)
    model = build_model(config.model, 1, split.num_items, dim=8, mlp_layers=(16, 8), seed=0)
    params, private, history = global_arrays(model), None, PrivacyHistory()
    epsilons = []
    for server_round in (1, 2, 3):
        result = training_round.train(config, data, 2, server_round, params, private, history)
        assert result.status == TRAINED
        params, private, history = result.global_arrays, result.private, result.history
        epsilons.append(result.epsilon)
    plan = plan_round(config, len(data.train_items))
    assert history.steps == 3 * plan.steps
    assert epsilons == sorted(epsilons) and epsilons[0] < epsilons[-1]
    one = epsilon([(1.0, plan.sample_rate, 3 * plan.steps)], config.dp_delta)
    assert epsilons[-1] == pytest.approx(one, rel=1e-9)  # one accountant fed all the steps


def test_device_declines_once_its_cap_would_be_passed():
    config = _dp_config()
    split = split_for(config)
    data = split.user_data(3)
    plan = plan_round(config, len(data.train_items))
    one_round = plan.history_after(PrivacyHistory()).epsilon(config.dp_delta)
    two_rounds = plan.history_after(plan.history_after(PrivacyHistory())).epsilon(config.dp_delta)
    capped = _dp_config(dp_epsilon_cap=(one_round + two_rounds) / 2)
    model = build_model(config.model, 1, split.num_items, dim=8, mlp_layers=(16, 8), seed=0)
    first = training_round.train(capped, data, 3, 1, global_arrays(model), None, PrivacyHistory())
    assert first.status == TRAINED and first.epsilon <= capped.dp_epsilon_cap
    second = training_round.train(
        capped, data, 3, 2, first.global_arrays, first.private, first.history
    )
    assert second.status == BUDGET_EXHAUSTED
    assert second.history == first.history and second.epsilon == first.epsilon  # nothing spent
    for sent, received in zip(second.global_arrays, first.global_arrays, strict=True):
        np.testing.assert_array_equal(sent, received)  # no update at all


def test_target_epsilon_sets_noise_for_planned_participations():
    config = _dp_config(dp_target_epsilon=4.0, dp_planned_participations=5)
    plan = plan_round(config, 40)
    reached = epsilon([(plan.noise_multiplier, plan.sample_rate, 5 * plan.steps)], config.dp_delta)
    assert reached == pytest.approx(4.0, rel=0.02)


def test_dp_randomness_is_secret_unless_reproducible_noise():
    """Seeded from the run's seed, the server could replay a device's DP noise and remove it."""
    config = _dp_config()
    split = split_for(config)
    data = split.user_data(2)
    model = build_model(config.model, 1, split.num_items, dim=8, mlp_layers=(16, 8), seed=0)

    def twice(cfg):
        return [training_round.train(cfg, data, 2, 1, global_arrays(model), None) for _ in range(2)]

    secret = twice(config)
    assert not np.array_equal(secret[0].global_arrays[0], secret[1].global_arrays[0])
    seeded = twice(_dp_config(dp_reproducible_noise=True))
    for a, b in zip(seeded[0].global_arrays, seeded[1].global_arrays, strict=True):
        np.testing.assert_array_equal(a, b)
