"""The cohort engine: one simulated node trains a shard of N users at once (docs/design.md §3).

Each user gets exactly what :func:`client.training_round.train` gives it alone: its own copy of
the global model, its own private embedding (restored from its state, or fresh from its own
seed), its own optimizer state (fresh every round), its own negatives and batch order (the same
:func:`shared.streams.train_negatives_rng` streams), and under interaction-level DP its own
Poisson sampling at its own rate, per-interaction clipping to C, Gaussian noise σ·C on every
coordinate of every step, its own accountant and ε cap. Nothing is shared between users but the
arithmetic: every tensor has a leading user dimension, and ``torch.func.vmap`` runs the model on
all of them in one call. So every user's guarantee is the one-user-per-node guarantee; only the
wall time changes.

DP-SGD's per-interaction gradients are taken with respect to the embedding ROWS an interaction
touches (its positive and negatives), not the whole tables: the squared norm of the scattered
row gradients is a k x k Gram sum per interaction (k = 1 + train-negatives), which is what
Opacus' ghost clipping computes too, without a dense per-sample table gradient.

Randomness: the Poisson sampling and the noise come from one torch generator per shard and
round, seeded like a device's (:func:`client.training_round._seed_round`): secret OS entropy
under interaction-level DP unless ``dp-reproducible-noise``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from client.dp import plan_round
from client.policy import DevicePolicy
from client.training_round import NO_POLICY, TrainResult, declined_result
from shared.config import RunConfig
from shared.models import global_names, private_names, private_state
from shared.privacy import PrivacyHistory, epsilon
from shared.split import UserData, training_examples
from shared.streams import (
    device_torch_seed,
    secret_seed,
    train_negatives_rng,
    user_embedding_seed,
)

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, which make_optimizer uses
ADAM_EPS = 1e-8
OPACUS_NORM_EPS = 1e-6  # Opacus' clip factor: C / (norm + 1e-6), at most 1


@dataclass(frozen=True)
class ShardUser:
    """One user of a shard as its node holds it: data and the state saved by earlier rounds."""

    user_id: int
    data: UserData
    private: Mapping[str, np.ndarray] | None = None
    history: PrivacyHistory = PrivacyHistory()


class StackedParams:
    """The shard's parameters, one slice per user: ``params[name][u]`` is user ``u``'s tensor.

    ``item_tables`` are the global embedding tables (indexed by item); ``private`` the user's own
    one-row tables; ``dense`` everything else (towers, output layer).
    """

    def __init__(
        self,
        config: RunConfig,
        num_items: int,
        global_params: Sequence[np.ndarray],
        privates: Sequence[Mapping[str, np.ndarray]],
        device: torch.device,
    ) -> None:
        self.model = config.build_model(num_items, seed=config.seed).to(device)
        self.names = global_names(self.model)
        self.private = private_names(self.model)
        modules = dict(self.model.named_modules())
        self.item_tables = [
            n
            for n in self.names
            if n.endswith(".weight") and isinstance(modules[n[: -len(".weight")]], nn.Embedding)
        ]
        self.dense = [n for n in self.names if n not in self.item_tables]
        users = len(privates)
        self.params: dict[str, torch.Tensor] = {}
        for name, array in zip(self.names, global_params, strict=True):
            one = torch.as_tensor(np.asarray(array), dtype=torch.float32, device=device)
            self.params[name] = one.unsqueeze(0).repeat(users, *([1] * one.dim())).contiguous()
        for name in self.private:
            stacked = np.stack([np.asarray(p[name], dtype=np.float32) for p in privates])
            self.params[name] = torch.as_tensor(stacked, device=device)

    def user_globals(self, u: int) -> list[np.ndarray]:
        return [self.params[n][u].detach().cpu().numpy().copy() for n in self.names]

    def user_private(self, u: int) -> dict[str, np.ndarray]:
        return {n: self.params[n][u].detach().cpu().numpy().copy() for n in self.private}


class StackedOptimizer:
    """Adam or SGD for every user at once, each user with its own state and step count.

    ``step(grads, active)`` updates only the ``active`` users (those with a step left), exactly
    as ``torch.optim.Adam`` (defaults) / ``torch.optim.SGD`` would update each alone; the others'
    parameters and moments stay as they are. In place: the dense tables are the cost.
    """

    def __init__(self, name: str, params: dict[str, torch.Tensor], lr: float) -> None:
        if name not in ("adam", "sgd"):
            raise ValueError(f"unknown optimizer {name!r}: choose adam or sgd")
        self.name, self.params, self.lr = name, params, lr
        users = next(iter(params.values())).shape[0]
        device = next(iter(params.values())).device
        self.steps = torch.zeros(users, dtype=torch.float64, device=device)
        self.m = {k: torch.zeros_like(v) for k, v in params.items()} if name == "adam" else {}
        self.v = {k: torch.zeros_like(v) for k, v in params.items()} if name == "adam" else {}

    def step(self, grads: Mapping[str, torch.Tensor], active: torch.Tensor) -> None:
        on = active.to(torch.float32)
        if self.name == "sgd":
            for k, g in grads.items():
                self.params[k].sub_(g * (self.lr * on).view(_shape(g)))
            return
        b1, b2 = ADAM_BETAS
        self.steps += active.to(torch.float64)
        steps = self.steps.clamp(min=1)
        step_size = (self.lr / (1 - b1**steps)).to(torch.float32) * on
        bc2_sqrt = torch.sqrt(1 - b2**steps).to(torch.float32)
        beta2 = torch.where(active, b2, 1.0).to(torch.float32)
        for k, g in grads.items():
            shape = _shape(g)
            m, v = self.m[k], self.v[k]
            m.lerp_(g, ((1 - b1) * on).view(shape))
            v.mul_(beta2.view(shape)).addcmul_(g * ((1 - b2) * on).view(shape), g)
            denom = v.sqrt().div_(bc2_sqrt.view(shape)).add_(ADAM_EPS)
            self.params[k].addcdiv_(m * (-step_size).view(shape), denom)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    """Broadcast a per-user vector over a stacked tensor."""
    return (-1,) + (1,) * (t.dim() - 1)


# -- plain local training: mini-batches of (item, label) rows, as shared.training.train_epoch -----
@dataclass(frozen=True)
class PlainBatches:
    """One epoch of every user's shuffled rows, padded: ``[users, steps, batch]``."""

    items: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    steps: torch.Tensor  # per user


def plain_batches(
    config: RunConfig,
    users: Sequence[ShardUser],
    server_round: int,
    epoch: int,
    device,
    rng_for: Callable[[int], np.random.Generator] | None = None,
) -> PlainBatches:
    """The rows and order :func:`client.training_round._local_epoch` would use, per user: from
    the training stream of this round and epoch, or from ``rng_for(user_id)`` (personalization's
    own stream)."""
    b = config.batch_size
    rows = []
    for user in users:
        if rng_for is None:
            rng = train_negatives_rng(config.seed, user.user_id, server_round, epoch)
        else:
            rng = rng_for(user.user_id)
        items, labels = training_examples(
            user.data.train_items, user.data.num_items, config.train_negatives, rng
        )
        order = rng.permutation(len(items))
        rows.append((items[order], labels[order]))
    steps = np.array([max(1, -(-len(i) // b)) if len(i) else 0 for i, _ in rows])
    shape = (len(users), int(steps.max(initial=1)) * b)
    items_p = np.zeros(shape, dtype=np.int64)
    labels_p = np.zeros(shape, dtype=np.float32)
    mask_p = np.zeros(shape, dtype=np.float32)
    for u, (items, labels) in enumerate(rows):
        items_p[u, : len(items)], labels_p[u, : len(items)], mask_p[u, : len(items)] = (
            items,
            labels,
            1.0,
        )
    view = (len(users), -1, b)
    return PlainBatches(
        items=torch.as_tensor(items_p, device=device).view(view),
        labels=torch.as_tensor(labels_p, device=device).view(view),
        mask=torch.as_tensor(mask_p, device=device).view(view),
        steps=torch.as_tensor(steps, device=device),
    )


def run_plain_epoch(stack: StackedParams, optimizer: StackedOptimizer, batches: PlainBatches):
    """One epoch for every user at once; returns each user's summed loss (x rows) this epoch."""
    model = stack.model

    def loss(params, items, labels, mask):
        logits = functional_call(model, params, (torch.zeros_like(items), items))
        bce = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        count = mask.sum()
        return (bce * mask).sum() / count.clamp(min=1), (bce * mask).sum()

    step_fn = vmap(grad_and_value(loss, has_aux=True))
    users = batches.items.shape[0]
    total = torch.zeros(users, device=batches.items.device)
    for t in range(batches.items.shape[1]):
        grads, (_, summed) = step_fn(
            stack.params, batches.items[:, t], batches.labels[:, t], batches.mask[:, t]
        )
        optimizer.step(grads, batches.steps > t)
        total += summed.detach()  # padding rows weigh 0
    return total


# -- DP-SGD: per-interaction groups, Poisson sampling, clipping and noise, as client/dp.py -------
@dataclass(frozen=True)
class DPGroups:
    """Every epoch's groups ``[users, epochs, n_max, k]`` (positive + negatives per interaction)."""

    items: torch.Tensor
    valid: torch.Tensor  # [users, n_max]: a real interaction, not padding
    rate: torch.Tensor  # q per user
    steps_per_epoch: torch.Tensor
    steps: torch.Tensor  # epochs x steps_per_epoch per user
    expected_batch: torch.Tensor  # Opacus' int(n * q) per user
    sigma: torch.Tensor


def dp_groups(
    config: RunConfig,
    users: Sequence[ShardUser],
    server_round: int,
    sigmas: Sequence[float],
    device,
) -> DPGroups:
    """Each user's groups per epoch, from the streams :class:`client.dp.InteractionGroups` uses."""
    k = 1 + config.train_negatives
    sizes = [len(u.data.train_items) for u in users]
    n_max = max(sizes + [1])
    items = np.zeros((len(users), config.local_epochs, n_max, k), dtype=np.int64)
    for u, user in enumerate(users):
        n = sizes[u]
        for epoch in range(config.local_epochs):
            rng = train_negatives_rng(config.seed, user.user_id, server_round, epoch)
            flat, _ = training_examples(
                user.data.train_items, user.data.num_items, config.train_negatives, rng
            )
            items[u, epoch, :n, 0] = flat[:n]
            items[u, epoch, :n, 1:] = flat[n:].reshape(n, config.train_negatives)
    plans = [plan_round(config, n) for n in sizes]
    spe = [p.steps // config.local_epochs for p in plans]
    valid = np.arange(n_max)[None, :] < np.array(sizes)[:, None]
    return DPGroups(
        items=torch.as_tensor(items, device=device),
        valid=torch.as_tensor(valid, device=device),
        rate=torch.tensor([p.sample_rate for p in plans], device=device),
        steps_per_epoch=torch.tensor(spe, device=device),
        steps=torch.tensor([p.steps for p in plans], device=device),
        expected_batch=torch.tensor(
            [float(int(n * p.sample_rate)) for n, p in zip(sizes, plans, strict=True)],
            device=device,
        ),
        sigma=torch.tensor(list(sigmas), dtype=torch.float32, device=device),
    )


def run_dp(
    stack: StackedParams,
    optimizer: StackedOptimizer,
    groups: DPGroups,
    max_grad_norm: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every user's DP-SGD steps at once; returns (summed step losses, non-empty steps) per user."""
    model = stack.model
    k = groups.items.shape[-1]
    tables, dense, private = stack.item_tables, stack.dense, stack.private
    local = torch.arange(k, device=groups.items.device)
    zeros = torch.zeros(k, dtype=torch.long, device=groups.items.device)

    def sample_loss(shared, rows, labels):
        logits = functional_call(model, {**shared, **rows}, (zeros, local))
        return nn.functional.binary_cross_entropy_with_logits(logits, labels).mean()

    per_sample = vmap(
        vmap(grad_and_value(sample_loss, argnums=(0, 1)), in_dims=(None, 0, None)),
        in_dims=(0, 0, None),
    )
    labels = torch.zeros(k, device=groups.items.device)
    labels[0] = 1.0
    users = groups.items.shape[0]
    loss_sum = torch.zeros(users, device=groups.items.device)
    nonempty = torch.zeros(users, device=groups.items.device)
    device = groups.items.device
    all_users = torch.arange(users, device=device)
    last_epoch = groups.items.shape[1] - 1
    for t in range(int(groups.steps.max())):
        active = groups.steps > t  # the others' steps are computed and discarded
        epoch = torch.div(t, groups.steps_per_epoch, rounding_mode="floor").clamp(max=last_epoch)
        epoch_items = groups.items[all_users, epoch]  # [U, n_max, k]
        draw = torch.rand(epoch_items.shape[:2], generator=generator, device=device)
        chosen = (draw < groups.rate[:, None]) & groups.valid & active[:, None]
        width = max(int(chosen.sum(1).max()), 1)
        order = torch.argsort((~chosen).to(torch.int8), dim=1, stable=True)[:, :width]
        sample_mask = torch.gather(chosen, 1, order).to(torch.float32)  # [U, S]
        items = torch.gather(epoch_items, 1, order[..., None].expand(-1, -1, k))  # [U, S, k]
        params = stack.params
        shared = {n: params[n] for n in dense + private}
        rows = {
            n: torch.gather(
                params[n][:, None].expand(-1, width, -1, -1),
                2,
                items[..., None].expand(-1, -1, -1, params[n].shape[-1]),
            )
            for n in tables
        }
        (g_shared, g_rows), losses = per_sample(shared, rows, labels)
        sq = torch.zeros_like(sample_mask)
        for g in g_shared.values():
            sq += g.flatten(2).pow(2).sum(-1)
        same = (items[..., :, None] == items[..., None, :]).to(torch.float32)
        for g in g_rows.values():
            sq += (torch.einsum("askd,asjd->askj", g, g) * same).sum((-1, -2))
        factor = (max_grad_norm / (sq.sqrt() + OPACUS_NORM_EPS)).clamp(max=1.0) * sample_mask
        std = (groups.sigma * max_grad_norm).to(torch.float32)
        grads = {n: torch.einsum("as,as...->a...", factor, g) for n, g in g_shared.items()}
        for n, g in g_rows.items():
            table = params[n]
            offsets = (all_users * table.shape[1])[:, None, None]
            contrib = (g * factor[..., None, None]).reshape(-1, g.shape[-1])
            summed = torch.zeros(users * table.shape[1], g.shape[-1], device=device)
            summed.index_add_(0, (items + offsets).reshape(-1), contrib)
            grads[n] = summed.view_as(table)
        for n, summed in grads.items():
            shape = _shape(summed)
            noise = torch.randn(summed.shape, generator=generator, device=device)
            grads[n] = summed.add_(noise.mul_(std.view(shape))).div_(
                groups.expected_batch.view(shape)
            )
        optimizer.step(grads, active)
        counts = sample_mask.sum(1)
        step_loss = (losses * sample_mask).sum(1) / counts.clamp(min=1)
        loss_sum += torch.where(counts > 0, step_loss, 0.0).detach()
        nonempty += (counts > 0).to(torch.float32)
    return loss_sum, nonempty


# -- the shard's round ----------------------------------------------------------------------------
def fresh_private(config: RunConfig, num_items: int, user_id: int) -> dict[str, np.ndarray]:
    """A user's first private embedding: the one its own device would start from."""
    return private_state(
        config.build_model(num_items, seed=user_embedding_seed(config.seed, user_id))
    )


def shard_generator(
    config: RunConfig, first_user: int, server_round: int, device
) -> torch.Generator:
    """The shard's torch generator: secret under interaction-level DP (see module docstring)."""
    generator = torch.Generator(device=device)
    if config.dp_interaction and not config.dp_reproducible_noise:
        generator.manual_seed(secret_seed(63))
    else:
        generator.manual_seed(device_torch_seed(config.seed, first_user, server_round) >> 1)
    return generator


CHUNK_USERS = 16  # users stacked per kernel call: their dense tables stay in the CPU's cache


def train_shard(
    config: RunConfig,
    users: Sequence[ShardUser],
    server_round: int,
    global_params: Sequence[np.ndarray],
    policy: DevicePolicy = NO_POLICY,
    device: str | torch.device = "cpu",
    chunk_users: int = CHUNK_USERS,
) -> list[TrainResult]:
    """One round for every user of the shard, each result as its own device would compute it.

    Users are stacked ``chunk_users`` at a time, by size (so that a chunk's users take about as
    many steps): one kernel call per chunk. Results come back in the order of ``users``.
    """
    policy.check_run(config)
    device = torch.device(device)
    num_items = users[0].data.num_items if users else 0
    privates = [
        dict(u.private) if u.private is not None else fresh_private(config, num_items, u.user_id)
        for u in users
    ]
    results: list[TrainResult | None] = [None] * len(users)
    if config.dp_interaction:
        plans = [plan_round(config, len(u.data.train_items)) for u in users]
        todo = []
        for u, (user, plan) in enumerate(zip(users, plans, strict=True)):
            if policy.declines(config, plan.history_after(user.history)):
                results[u] = declined_result(
                    config, user.data, global_params, privates[u], user.history
                )
            else:
                todo.append(u)
    else:
        todo = list(range(len(users)))
    todo.sort(key=lambda u: len(users[u].data.train_items))
    train = _train_dp if config.dp_interaction else _train_plain
    for start in range(0, len(todo), chunk_users):
        chunk = todo[start : start + chunk_users]
        done = train(
            config,
            [users[u] for u in chunk],
            server_round,
            global_params,
            [privates[u] for u in chunk],
            device,
        )
        for u, result in zip(chunk, done, strict=True):
            results[u] = result
    return [r for r in results if r is not None]


@lru_cache(maxsize=4096)
def _epsilon(entries: tuple, delta: float, accountant: str) -> float:
    """ε of an accountant's entries, memoized: users of one size share q and steps, so a shard's
    accountants are a few distinct histories (the accountant is most of a DP round's cost)."""
    return epsilon(entries, delta, accountant)


def _user_epsilon(config: RunConfig, history: PrivacyHistory) -> float:
    return _epsilon(history.entries, config.dp_delta, config.dp_accountant)


def _train_plain(config, users, server_round, global_params, privates, device):
    stack = StackedParams(config, users[0].data.num_items, global_params, privates, device)
    optimizer = StackedOptimizer(
        config.optimizer, stack.params, config.local_learning_rate(server_round)
    )
    rows = torch.tensor(
        [len(u.data.train_items) * (1 + config.train_negatives) for u in users], device=device
    )
    losses = []
    for epoch in range(config.local_epochs):
        batches = plain_batches(config, users, server_round, epoch, device)
        losses.append(run_plain_epoch(stack, optimizer, batches) / rows.clamp(min=1))
    mean_loss = torch.stack(losses).mean(0).tolist()
    return [
        TrainResult(
            global_arrays=stack.user_globals(u),
            private=stack.user_private(u),
            loss=float(mean_loss[u]),
            num_examples=len(user.data.train_items),
        )
        for u, user in enumerate(users)
    ]


def _train_dp(config, users, server_round, global_params, privates, device):
    plans = [plan_round(config, len(u.data.train_items)) for u in users]
    stack = StackedParams(config, users[0].data.num_items, global_params, privates, device)
    optimizer = StackedOptimizer(
        config.optimizer, stack.params, config.local_learning_rate(server_round)
    )
    groups = dp_groups(config, users, server_round, [p.noise_multiplier for p in plans], device)
    generator = shard_generator(config, users[0].user_id, server_round, device)
    loss_sum, nonempty = run_dp(stack, optimizer, groups, config.dp_max_grad_norm, generator)
    results = []
    for j, (user, plan) in enumerate(zip(users, plans, strict=True)):
        history = plan.history_after(user.history)
        steps = float(nonempty[j])
        results.append(
            TrainResult(
                global_arrays=stack.user_globals(j),
                private=stack.user_private(j),
                loss=float(loss_sum[j]) / steps if steps else float("nan"),
                num_examples=len(user.data.train_items),
                history=history,
                epsilon=_user_epsilon(config, history),
                noise_multiplier=plan.noise_multiplier,
            )
        )
    return results
