"""On-device DP-SGD with Opacus: interaction-level differential privacy (docs/design.md §4).

The protected unit is one interaction of one device. Each DP-SGD sample is one positive
interaction together with its freshly sampled negatives, so clipping the per-sample gradient
bounds everything a single interaction contributes. The user's private embedding is a parameter
of the same model, so it is trained inside the same clipped, noised steps.

Per-sample gradients use Opacus' ghost clipping: the default hooks materialize a dense
B x V x D gradient per embedding table per step (docs/design.md §8), ghost clipping computes the
same norms from the sparse indices. The device's accountant is a :class:`PrivacyHistory`
restored from the device state before training and saved after it, so ε composes over the whole
run.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from shared.config import RunConfig
from shared.privacy import PrivacyHistory, noise_for_target
from shared.quiet import import_opacus_quietly
from shared.split import UserData, training_examples
from shared.streams import train_negatives_rng
from shared.training import make_optimizer

GRAD_SAMPLE_MODE = "ghost"
# Inputs are item indices, which need no gradient: torch's full-backward-hook warning about that
# is expected under Opacus and says nothing about correctness. Set once, not per round.
warnings.filterwarnings("ignore", message="Full backward hook is firing")


class InteractionGroups(Dataset):
    """One sample per positive interaction: ([positive, negatives...], labels)."""

    def __init__(self, data: UserData, negatives: int) -> None:
        self.data = data
        self.negatives = negatives
        self.items = torch.empty(0)
        self.labels = torch.empty(0)

    def resample(self, rng: np.random.Generator) -> None:
        """Fresh negatives for a new epoch (they never include the device's positives)."""
        items, _ = training_examples(
            self.data.train_items, self.data.num_items, self.negatives, rng
        )
        n = len(self.data.train_items)
        grouped = np.concatenate([items[:n, None], items[n:].reshape(n, self.negatives)], axis=1)
        self.items = torch.as_tensor(grouped, dtype=torch.long)
        self.labels = torch.zeros(self.items.shape)
        self.labels[:, 0] = 1.0

    def __len__(self) -> int:
        return len(self.data.train_items)

    def __getitem__(self, index: int):
        return self.items[index], self.labels[index]


class GroupedBCE(nn.Module):
    """BCE over one interaction's group; ``reduction='none'`` gives one loss per group (sample)."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_group = nn.functional.binary_cross_entropy_with_logits(
            logits, labels, reduction="none"
        ).mean(dim=1)
        if self.reduction == "none":
            return per_group
        return per_group.sum() if self.reduction == "sum" else per_group.mean()


class GroupScorer(nn.Module):
    """Adapts a recommender to grouped inputs: the one user row against each group's items."""

    def __init__(self, model: nn.Module, user_row: int = 0) -> None:
        super().__init__()
        self.model = model
        self.user_row = user_row

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.model(torch.full_like(items, self.user_row), items)


@dataclass(frozen=True)
class RoundPlan:
    """What one round of local DP-SGD will do, known before any data is touched."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def history_after(self, history: PrivacyHistory) -> PrivacyHistory:
        return history.add(self.noise_multiplier, self.sample_rate, self.steps)


def plan_round(config: RunConfig, num_interactions: int) -> RoundPlan:
    """σ, q and steps for this device (q = batch / n as Opacus' Poisson loader uses it)."""
    steps_per_epoch = max(1, -(-num_interactions // config.batch_size))  # len(DataLoader)
    sample_rate = 1.0 / steps_per_epoch
    steps = config.local_epochs * steps_per_epoch
    sigma = config.dp_noise_multiplier
    if config.dp_target_epsilon > 0:
        planned = steps * config.dp_planned_participations
        sigma = noise_for_target(
            config.dp_target_epsilon, config.dp_delta, sample_rate, planned, config.dp_accountant
        )
    return RoundPlan(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps)


def train_private(
    config: RunConfig,
    model: nn.Module,
    data: UserData,
    user_id: int,
    server_round: int,
    plan: RoundPlan,
    history: PrivacyHistory,
) -> tuple[float, PrivacyHistory]:
    """Local DP-SGD in place on ``model``; returns (mean loss, history including this round)."""
    dataset = InteractionGroups(data, config.train_negatives)
    dataset.resample(train_negatives_rng(config.seed, user_id, server_round))
    import_opacus_quietly()  # on first use only: see shared.quiet and shared.privacy
    from opacus import PrivacyEngine

    lr = config.local_learning_rate(server_round)
    optimizer = make_optimizer(config.optimizer, model.parameters(), lr)
    with warnings.catch_warnings():
        # Opacus warns that secure_mode is off: simulation noise is seeded for reproducibility.
        warnings.simplefilter("ignore", UserWarning)
        engine = PrivacyEngine(accountant=config.dp_accountant)
        module, dp_optimizer, criterion, loader = engine.make_private(
            module=GroupScorer(model),
            optimizer=optimizer,
            criterion=GroupedBCE(),
            data_loader=DataLoader(dataset, batch_size=config.batch_size),
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=config.dp_max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode=GRAD_SAMPLE_MODE,
        )
    losses = []
    for epoch in range(config.local_epochs):
        if epoch:
            dataset.resample(train_negatives_rng(config.seed, user_id, server_round, epoch))
        for items, labels in loader:
            loss = private_step(module, dp_optimizer, criterion, items, labels)
            if loss is not None:
                losses.append(loss)
    for sigma, rate, steps in engine.accountant.history:
        history = history.add(float(sigma), float(rate), int(steps))
    return (float(np.mean(losses)) if losses else float("nan")), history


def private_step(module, dp_optimizer, criterion, items: torch.Tensor, labels: torch.Tensor):
    """One DP-SGD step; returns its loss, or None for an empty Poisson batch.

    Poisson sampling gives an empty batch with probability (1 - q)^n. That step must still add
    noise: skipping it would publish a noise-free step exactly when nobody was sampled, which
    the accountant (counting every step as noised) does not allow. Opacus' ghost-clipping
    embedding hook cannot run a backward pass on zero samples, so the empty case sets a zero
    clipped-gradient sum and lets the optimizer add noise and count the step as usual.
    """
    dp_optimizer.zero_grad()
    if len(items) == 0:
        for param in dp_optimizer.params:
            param.grad = torch.zeros_like(param)
        dp_optimizer.step()
        return None
    loss = criterion(module(items), labels)
    loss.backward()
    dp_optimizer.step()
    return float(loss.detach())
