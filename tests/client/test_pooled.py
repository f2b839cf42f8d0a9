"""Pooled interaction-level DP on the device: the clipped gradient sum, the private step, the
accountant, the cap, and a shard that gives every user what its own device gives it."""

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, vmap

from client import training_round
from client.cohort import ShardUser
from client.dp import GroupedBCE
from client.pooled import Member, RowGroups, clipped_gradient_sum, member_rng, sampled_groups
from client.shard import pooled_shard
from shared.models import build_model, global_arrays
from shared.pooled import plan_pooled
from shared.privacy import PrivacyHistory
from shared.split import split_for
from shared.streams import Stream, generator
from shared.wire import BUDGET_EXHAUSTED, TRAINED
from tests.conftest import small_config

MODELS = ["neumf", "gmf", "mlp", "mf"]


def pooled_config(**changes):
    values = {
        "dp_interaction": True,
        "dp_interaction_mode": "pooled",
        "strategy": "fedadam",
        "dp_pooled_sample_rate": 0.5,
        "dp_reproducible_noise": True,  # so that two paths can be compared draw for draw
    }
    return small_config(**(values | changes))


def _per_sample_reference(model, samples, clip):
    """Independent of Opacus: every sample's full gradient by torch.func, clipped, summed."""
    scorer = RowGroups(model)
    params = {k: v.detach() for k, v in scorer.named_parameters()}
    labels = torch.zeros(samples.shape[0], samples.shape[1] - 1)
    labels[:, 0] = 1.0

    def loss(p, sample, label):
        logits = functional_call(scorer, p, (sample[None],))
        return GroupedBCE("sum")(logits, label[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, samples, labels)
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per_sample.values()))
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    summed = {
        k.removeprefix("model."): (g * factor.view(-1, *[1] * (g.dim() - 1))).sum(0)
        for k, g in per_sample.items()
    }
    return summed, norms


@pytest.mark.parametrize("model_name", MODELS)
def test_clipped_sum_is_the_sum_of_jointly_clipped_per_sample_gradients(model_name):
    torch.manual_seed(0)
    model = build_model(model_name, 3, 50, dim=8, mlp_layers=(16, 8), seed=1)
    rows = torch.tensor([[0], [0], [1], [2], [2], [2]])
    samples = torch.cat([rows, torch.randint(0, 50, (6, 5))], dim=1)
    _, norms = _per_sample_reference(model, samples, clip=float("inf"))
    clip = float(norms.median())  # so that the clip binds for some samples and not for others
    reference, _ = _per_sample_reference(model, samples, clip=clip)
    assert (norms > clip).any() and (norms < clip).any()
    got, loss = clipped_gradient_sum(model, samples, clip_norm=clip)
    assert sorted(got) == sorted(reference)
    for name in got:
        torch.testing.assert_close(got[name], reference[name], atol=1e-5, rtol=1e-4)
    assert np.isfinite(loss)
    # Opacus' hooks are gone and no gradient is left behind on the model
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


def test_the_reply_keeps_the_models_dtype_whatever_the_server_sent():
    """A server optimizer's model is float64; a reply in float64 would be rejected."""
    config = pooled_config()
    split = split_for(config)
    params = [a.astype(np.float64) for a in global_arrays(config.build_model(split.num_items))]
    result = training_round.train(config, split.user_data(0), 0, 2, params, None)
    assert {a.dtype for a in result.global_arrays} == {np.dtype(np.float32)}


def test_a_sum_past_the_servers_norm_bound_is_projected_onto_it():
    """A device with many sampled interactions would be rejected by max-update-norm, a rejection
    that depends on its data; it sends the sum scaled onto the bound instead."""
    config = pooled_config(dp_pooled_sample_rate=1.0, max_update_norm=0.5)
    split = split_for(config)
    params = global_arrays(config.build_model(split.num_items))
    result = training_round.train(config, split.user_data(0), 0, 1, params, None)
    update = [
        np.asarray(n, np.float64) - p for n, p in zip(result.global_arrays, params, strict=True)
    ]
    norm = float(np.sqrt(sum(float(np.sum(u * u)) for u in update)))
    assert 0.49 < norm <= 0.5


def test_an_empty_sample_sums_to_zero():
    model = build_model("neumf", 1, 50, dim=8, mlp_layers=(16, 8), seed=1)
    got, loss = clipped_gradient_sum(model, torch.zeros((0, 6), dtype=torch.long), 1.0)
    assert all(float(g.abs().sum()) == 0 for g in got.values()) and np.isnan(loss)


def test_the_private_step_is_the_noised_clipped_sum_over_batch_size():
    config = pooled_config(optimizer="sgd", learning_rate=0.5, batch_size=4)
    split = split_for(config)
    data = split.user_data(2)
    params = global_arrays(config.build_model(split.num_items))
    before = training_round.device_model(config, split.num_items, 2, params, None)
    result = training_round.train(config, data, 2, 5, params, None)
    # Replay the device's own draws (reproducible-noise run): sample, clipped sum, noise.
    plan = plan_pooled(config)
    rng = member_rng(config, 2, 5)
    samples = sampled_groups(config, Member(0, 2, data), 5, plan.sample_rate, rng)
    grads, _ = clipped_gradient_sum(before, samples, plan.clip_norm)
    for name, old in dict(before.named_parameters()).items():
        if not name.startswith("user_"):
            continue
        noise = rng.normal(0.0, plan.noise_stddev, size=tuple(old.shape[1:]))
        expected = old.detach().numpy() - 0.5 * (grads[name].numpy() + noise) / 4
        np.testing.assert_allclose(result.private[name], expected, atol=1e-6)
    # and the update the server gets is minus the global part of the same clipped sum
    names = [n for n, _ in before.named_parameters() if not n.startswith("user_")]
    for name, new, old in zip(names, result.global_arrays, params, strict=True):
        np.testing.assert_allclose(new - old, -grads[name].numpy(), atol=2e-5)


def test_one_step_at_the_runs_rate_whatever_the_data_size():
    config = pooled_config(dp_noise_multiplier=0.9, dp_pooled_sample_rate=0.2)
    split = split_for(config)
    params = global_arrays(config.build_model(split.num_items))
    sizes = {u: len(split.user_data(u).train_items) for u in range(split.num_users)}
    small, large = min(sizes, key=sizes.get), max(sizes, key=sizes.get)
    assert sizes[large] > 2 * sizes[small]
    results = [
        training_round.train(config, split.user_data(u), u, 1, params, None) for u in (small, large)
    ]
    for r in results:
        assert r.status == TRAINED
        assert r.history.entries == ((0.9, 0.2, 1),)
        assert r.noise_multiplier == 0.9
    assert results[0].epsilon == results[1].epsilon  # the ε says nothing about the size
    # the next round adds one more step to the device's own accountant
    again = training_round.train(
        config, split.user_data(small), small, 2, params, results[0].private, results[0].history
    )
    assert again.history.entries == ((0.9, 0.2, 2),)


def test_a_target_epsilon_is_reached_after_the_planned_participations():
    config = pooled_config(dp_target_epsilon=4.0, dp_planned_participations=20)
    plan = plan_pooled(config)
    history = PrivacyHistory().add(plan.noise_multiplier, plan.sample_rate, 20)
    assert history.epsilon(config.dp_delta) == pytest.approx(4.0, abs=0.02)
    assert history.epsilon(config.dp_delta) <= 4.0


def test_a_device_at_the_cap_declines_and_sends_the_model_back():
    config = pooled_config(dp_noise_multiplier=1.0, dp_epsilon_cap=1.0)
    split = split_for(config)
    params = global_arrays(config.build_model(split.num_items))
    result = training_round.train(config, split.user_data(0), 0, 1, params, None)
    assert result.status == BUDGET_EXHAUSTED
    assert result.history.entries == ()
    for new, old in zip(result.global_arrays, params, strict=True):
        np.testing.assert_array_equal(new, old)


def test_without_reproducible_noise_the_draws_are_secret():
    """Two devices with the same seed, data and model draw different samples and noise."""
    config = pooled_config(dp_reproducible_noise=False)
    split = split_for(config)
    params = global_arrays(config.build_model(split.num_items))
    a, b = (training_round.train(config, split.user_data(0), 0, 1, params, None) for _ in range(2))
    assert not np.allclose(a.private["user_gmf.weight"], b.private["user_gmf.weight"])
    # ... while a reproducible run repeats them from the stream named for it
    reproducible = pooled_config()
    assert (
        member_rng(reproducible, 0, 1).random()
        == generator(reproducible.seed, Stream.POOLED_DEVICE, 0, 1).random()
    )


@pytest.mark.parametrize("model_name", MODELS)
def test_a_shard_gives_every_user_its_own_devices_round(model_name):
    config = pooled_config(model=model_name, dp_epsilon_cap=6.0, dp_noise_multiplier=1.0)
    split = split_for(config)
    params = global_arrays(config.build_model(split.num_items))
    users = [1, 4, 9, 13]
    histories = {u: PrivacyHistory() for u in users}
    histories[9] = PrivacyHistory().add(1.0, 0.5, 3)  # one more round passes the cap of 6
    shard = [ShardUser(u, split.user_data(u), None, histories[u]) for u in users]
    together, total = pooled_shard(config, shard, 3, params, training_round.NO_POLICY)
    alone = [
        training_round.train(config, split.user_data(u), u, 3, params, None, histories[u])
        for u in users
    ]
    assert [r.status for r in together] == [r.status for r in alone]
    assert alone[2].status == BUDGET_EXHAUSTED
    expected = [
        sum(np.asarray(r.global_arrays[i], np.float64) - params[i] for r in alone)
        for i in range(len(params))
    ]
    for got, want in zip(total, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=5e-5)
    assert max(float(np.abs(t).max()) for t in total) > 0.1  # something was summed
    for t, a in zip(together, alone, strict=True):
        assert t.history == a.history and t.epsilon == a.epsilon
        for name in a.private:
            np.testing.assert_allclose(t.private[name], a.private[name], atol=1e-6)


def test_a_shard_whose_drawn_users_are_all_at_their_budget_sends_nothing():
    config = pooled_config(dp_noise_multiplier=1.0, dp_epsilon_cap=1.0)
    split = split_for(config)
    params = global_arrays(config.build_model(split.num_items))
    shard = [ShardUser(u, split.user_data(u)) for u in (0, 5)]
    results, total = pooled_shard(config, shard, 1, params, training_round.NO_POLICY)
    assert [r.status for r in results] == [BUDGET_EXHAUSTED] * 2
    assert all(float(np.abs(t).sum()) == 0 for t in total)
    assert [t.shape for t in total] == [p.shape for p in params]
