"""SASRec training: at every position predict the next item, BCE against one sampled negative.

Shared by a device (one user's sequence) and the centralized baseline (every user's). A user's
training items (oldest first, :mod:`shared.split`) are cut into windows of at most
``max_length`` next-item steps, ending at the latest one, so every training interaction is a
target exactly once per epoch, also for users with more than ``max_length`` items.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from shared.sequence_model import PAD, SASRec, pad_left


def training_windows(items: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, targets)``, each ``(windows, max_length)``: ``targets[w, t]`` is the item
    after ``inputs[w, t]``; windows end at the latest item, and empty slots are PAD."""
    items = np.asarray(items, dtype=np.int64)
    steps = len(items) - 1
    inputs, targets = [], []
    for end in range(steps, 0, -max_length):
        start = max(end - max_length, 0)
        inputs.append(pad_left(items[start:end], max_length))
        targets.append(pad_left(items[start + 1 : end + 1], max_length))
    if not inputs:
        empty = np.zeros((0, max_length), dtype=np.int64)
        return empty, empty.copy()
    return np.stack(inputs), np.stack(targets)


def sample_negatives(
    targets: np.ndarray, seen: np.ndarray, num_items: int, rng: np.random.Generator
) -> np.ndarray:
    """One uniform item the user never interacted with per non-PAD target (PAD stays PAD)."""
    negatives = np.full(targets.shape, PAD, dtype=np.int64)
    slots = targets != PAD
    if len(np.unique(seen)) >= num_items:
        raise ValueError("the user has interacted with every item: no negative to sample")
    draw = rng.integers(num_items, size=int(slots.sum()))
    bad = np.isin(draw, seen)
    while bad.any():  # rejection: the expected number of redraws is small on sparse data
        draw[bad] = rng.integers(num_items, size=int(bad.sum()))
        bad = np.isin(draw, seen)
    negatives[slots] = draw
    return negatives


def user_examples(
    items: np.ndarray, num_items: int, max_length: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, positives, negatives) windows of one user's training sequence."""
    inputs, positives = training_windows(items, max_length)
    return inputs, positives, sample_negatives(positives, items, num_items, rng)


def train_sequence_epoch(
    model: SASRec,
    optimizer: torch.optim.Optimizer,
    inputs: np.ndarray,
    positives: np.ndarray,
    negatives: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
) -> float:
    """One shuffled pass over windows (``batch_size`` windows a step); mean loss per target."""
    model.train()
    order = rng.permutation(len(inputs))
    tensors = [torch.as_tensor(a[order], dtype=torch.long) for a in (inputs, positives, negatives)]
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        seq, pos, neg = (t[start : start + batch_size] for t in tensors)
        present = pos != PAD
        optimizer.zero_grad()
        loss = sequence_loss(model, seq, pos, neg)
        loss.backward()
        optimizer.step()
        n = int(present.sum())
        total += loss.item() * n
        count += n
    return total / max(count, 1)


def sequence_loss(
    model: SASRec, seq: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
) -> torch.Tensor:
    """Mean BCE over the non-PAD positions: the next item is 1, the sampled negative 0."""
    present = pos != PAD
    states = model.encode(seq)
    pos_logits = (states * model.item_representation(pos.clamp(min=0))).sum(-1)[present]
    neg_logits = (states * model.item_representation(neg.clamp(min=0))).sum(-1)[present]
    bce = nn.functional.binary_cross_entropy_with_logits
    return bce(pos_logits, torch.ones_like(pos_logits)) + bce(
        neg_logits, torch.zeros_like(neg_logits)
    )


def pooled_examples(
    sequences: Sequence[np.ndarray],
    num_items: int,
    max_length: int,
    rngs: Sequence[np.random.Generator],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every user's windows stacked (the centralized baseline's epoch)."""
    parts = [
        user_examples(s, num_items, max_length, r) for s, r in zip(sequences, rngs, strict=True)
    ]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]
