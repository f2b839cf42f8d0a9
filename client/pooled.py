"""Pooled interaction-level DP on a device, or on a shard of simulated users at once.

The mode and its plan: :mod:`shared.pooled`; its guarantee: docs/design.md §4. One round:

1. Poisson-sample the user's interactions at the run's q, from secret randomness; each sample is
   one interaction with its freshly sampled negatives (the unit, as in :mod:`client.dp`);
2. take each sample's gradient at the received global model with respect to the global
   parameters AND the user's private embedding together, and clip that one vector to C
   (Opacus' ghost clipping: the norms come from the sparse indices, no B x V x D tensor);
3. the global part of the clipped sum is what the device sends: the noise on it is added once,
   to the cohort's sum (by the server, :class:`server.steps.PooledNoise`);
4. the private part gets N(0, (σC)²) on every coordinate from the device's own secret
   randomness, and the embedding takes one step on it (divided by ``batch-size``, a public
   constant; Opacus would divide by q·n, which depends on the device's size: opacus #819).

Why (4) keeps the guarantee: one interaction moves the pair (global sum, private sum) by at most
C in l2, since the pair was clipped as one vector, and every coordinate of the pair carries
N(0, (σC)²): the private ones from the device, the global ones from the noise on the cohort's
sum, which the other devices' sums cannot cancel (they do not depend on this interaction). So a
round is one sampled Gaussian step at (σ, q) for the device, which is what its accountant adds.
An embedding stepped without noise would carry its interactions, unbounded, into every later
round's item gradient.

A shard's users share one model (one private row each), so a round is one pooled backward pass
over all their samples: a sample's gradient touches only its own user's row, so every user's
clip, sum and private step are exactly those of its own device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from client.dp import GroupedBCE, InteractionGroups
from shared.config import RunConfig
from shared.models import global_names, private_names
from shared.pooled import PooledPlan
from shared.quiet import import_opacus_quietly
from shared.split import UserData
from shared.streams import Stream, generator, secret_seed, train_negatives_rng
from shared.training import make_optimizer


@dataclass(frozen=True)
class Member:
    """One user of a pooled round: its row in the model, its id (seed streams) and its data."""

    row: int
    user_id: int
    data: UserData


class RowGroups(nn.Module):
    """Each sample is ``[row, positive, negatives...]``: that user row against its group."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        rows = samples[:, :1].expand(-1, samples.shape[1] - 1).contiguous()  # Opacus views it
        return self.model(rows, samples[:, 1:].contiguous())


def member_rng(config: RunConfig, user_id: int, server_round: int) -> np.random.Generator:
    """The randomness the guarantee rests on (Poisson sample, private noise): OS entropy, fresh
    every round; from the run seed only with ``dp-reproducible-noise`` (research runs)."""
    if config.dp_reproducible_noise:
        return generator(config.seed, Stream.POOLED_DEVICE, user_id, server_round)
    return np.random.default_rng(secret_seed(128))


def sampled_groups(
    config: RunConfig,
    member: Member,
    server_round: int,
    sample_rate: float,
    rng: np.random.Generator,
) -> torch.Tensor:
    """The member's Poisson sample: one ``[row, positive, negatives...]`` per interaction."""
    groups = InteractionGroups(member.data, config.train_negatives)
    groups.resample(train_negatives_rng(config.seed, member.user_id, server_round))
    keep = torch.as_tensor(rng.random(len(groups)) < sample_rate)
    items = groups.items[keep]
    return torch.cat([torch.full((len(items), 1), member.row, dtype=torch.long), items], dim=1)


def clipped_gradient_sum(
    model: nn.Module, samples: torch.Tensor, clip_norm: float
) -> tuple[dict[str, torch.Tensor], float]:
    """(sum over samples of min(1, C / ||g_i||) g_i for every parameter, mean loss).

    g_i is sample i's gradient with respect to every parameter of ``model`` at once (global and
    private: the clip is joint). Computed with Opacus' ghost clipping (two backward passes, the
    second weighted by the clip factors); Opacus' optimizer is built only because its loss wrapper
    needs one: nothing steps and nothing is noised here.
    """
    params = dict(model.named_parameters())
    if len(samples) == 0:
        return {name: torch.zeros_like(p) for name, p in params.items()}, float("nan")
    import_opacus_quietly()
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    module = GradSampleModuleFastGradientClipping(
        RowGroups(model), max_grad_norm=clip_norm, loss_reduction="sum", use_ghost_clipping=True
    )
    try:
        optimizer = DPOptimizerFastGradientClipping(
            torch.optim.SGD(module.parameters(), lr=0.0),
            noise_multiplier=0.0,
            max_grad_norm=clip_norm,
            expected_batch_size=len(samples),
            loss_reduction="sum",
        )
        criterion = DPLossFastGradientClipping(module, optimizer, GroupedBCE("sum"), "sum")
        labels = torch.zeros(samples.shape[0], samples.shape[1] - 1)
        labels[:, 0] = 1.0
        loss = criterion(module(samples), labels)
        loss.backward()
        grads = {
            name: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for name, p in params.items()
        }
        mean_loss = float(loss.detach()) / len(samples)
    finally:
        module._close()  # removes Opacus' hooks: the model is used again without them
        for p in params.values():
            p.grad = None
    return grads, mean_loss


def pooled_round(
    config: RunConfig,
    model: nn.Module,
    members: Sequence[Member],
    server_round: int,
    plan: PooledPlan,
) -> tuple[list[np.ndarray], float]:
    """One pooled round for ``members`` (rows of ``model``): steps their private rows in place
    and returns (the global part of the clipped gradient sum in :func:`global_names` order, the
    mean loss)."""
    rngs = [member_rng(config, m.user_id, server_round) for m in members]
    parts = [
        sampled_groups(config, m, server_round, plan.sample_rate, rng)
        for m, rng in zip(members, rngs, strict=True)
    ]
    grads, loss = clipped_gradient_sum(model, torch.cat(parts), plan.clip_norm)
    step_private(config, model, grads, members, rngs, plan, server_round)
    total = [grads[name].double().numpy() for name in global_names(model)]
    return total, loss


def step_private(
    config: RunConfig,
    model: nn.Module,
    grads: dict[str, torch.Tensor],
    members: Sequence[Member],
    rngs: Sequence[np.random.Generator],
    plan: PooledPlan,
    server_round: int,
) -> None:
    """Each member's private rows: (clipped sum + N(0, (σC)²)) / batch-size, one optimizer step.

    A fresh optimizer per round, as a device's local epochs use: its update is per coordinate,
    so one optimizer over the shard's rows steps every row exactly as its own device would.
    """
    params = dict(model.named_parameters())
    names = private_names(model)
    rows = [m.row for m in members]
    for name in names:
        grad = grads[name].clone()
        for row, rng in zip(rows, rngs, strict=True):
            noise = rng.normal(0.0, plan.noise_stddev, size=tuple(grad[row].shape))
            grad[row] += torch.as_tensor(noise, dtype=grad.dtype)
        params[name].grad = grad / config.batch_size
    private = [params[name] for name in names]
    optimizer = make_optimizer(config.optimizer, private, config.local_learning_rate(server_round))
    optimizer.step()
    for p in private:
        p.grad = None
