"""Item promotion by malicious devices: who attacks, which item, and what they upload.

Research only: the poisoning audit (``confide audit poisoning``; docs/design.md §4, "Poisoning
audit"). A share ``audit-poison-fraction`` of the simulated devices is malicious. Every round it
is sampled, such a device ignores its data and uploads the global model with one target item's
rows moved, in every item table, towards those of an average popular item (the mean direction
of the most popular items' rows, at their mean length; their mean bias), so that the model
scores the target like a popular item for everyone: popular items' rows are the ones that score
high for most users, and the attacker need not know any user's private embedding.

What the attacker is assumed to know: the global model (every device gets it), the catalogue's
most popular items (public charts; here, the split's training counts), the aggregation rule and
the server's update-norm bound (both in the run config). It scales its push to undo the
aggregation's dilution (FedAvg divides by the cohort, item-sum adds item rows as they are) and
keeps the whole update just under ``max-update-norm``, so that bound never rejects it.

The target is an item few users have (drawn from the least popular half of the items that have
any training interaction, so it has a trained row); the attackers are drawn uniformly from the
devices. Both come from the run seed's ``AUDIT_POISON`` stream, so the server (which records the
target's exposure) and the devices (which know whether they attack) agree without a message.
Pure NumPy, no torch, no Flower.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from shared.streams import Stream, generator

if TYPE_CHECKING:
    from shared.config import RunConfig
    from shared.split import LeaveOneOut

POPULAR_ITEMS = 20  # the attacker's "popular items": the catalogue's top 20
NORM_MARGIN = 0.99  # an attacker's update stays this far below the server's norm bound
# Sub-streams of Stream.AUDIT_POISON (from 1: a seed tuple must not end in a zero).
_ATTACKERS, _TARGET = 1, 2


@dataclass(frozen=True)
class PoisonPlan:
    """The attack of one run: the promoted item, the malicious devices, the popular items."""

    target: int
    attackers: frozenset[int]  # dense user ids
    popular: tuple[int, ...]  # the items whose rows the target is moved towards


def poison_plan(config: RunConfig, split: LeaveOneOut) -> PoisonPlan | None:
    """The run's attack (None when ``audit-poison-fraction`` is 0)."""
    if not config.audit_poison_fraction:
        return None
    users = split.num_users
    count = max(1, round(config.audit_poison_fraction * users))
    attackers = generator(config.seed, Stream.AUDIT_POISON, _ATTACKERS).choice(
        users, size=count, replace=False
    )
    counts = np.bincount(split.train_items, minlength=split.num_items)
    held = np.flatnonzero(counts)  # items with a trained row
    by_count = held[np.argsort(counts[held], kind="stable")]
    cold = by_count[: max(1, len(by_count) // 2)]
    target = int(generator(config.seed, Stream.AUDIT_POISON, _TARGET).choice(cold))
    order = np.argsort(-counts, kind="stable")
    popular = tuple(int(i) for i in order[order != target][:POPULAR_ITEMS])
    return PoisonPlan(
        target=target, attackers=frozenset(int(a) for a in attackers), popular=popular
    )


def dilution(config: RunConfig) -> float:
    """How much the aggregation shrinks one device's item-row change: FedAvg and FedAdam average
    over the cohort, item-sum adds item rows unscaled (the attacker reads the run config)."""
    if config.strategy == "itemsum":
        return 1.0
    return float(config.clients_per_round or 1)


def promotion_update(
    names: Sequence[str],
    arrays: Sequence[np.ndarray],
    plan: PoisonPlan,
    num_items: int,
    scale: float,
    norm_bound: float | None,
) -> list[np.ndarray]:
    """The arrays an attacker uploads: ``arrays`` with the target's rows in every item table
    (``item_*`` with ``num_items`` rows) moved ``scale`` times the way to an average popular
    item's, the whole change kept below ``norm_bound`` (None: unbounded)."""
    deltas = [np.zeros_like(a, dtype=np.float64) for a in arrays]
    for index, (name, table) in enumerate(zip(names, arrays, strict=True)):
        if not name.startswith("item_") or table.ndim != 2 or table.shape[0] != num_items:
            continue
        deltas[index][plan.target] = scale * (
            _average_popular(table, plan.popular) - table[plan.target]
        )
    norm = float(np.sqrt(sum(float(np.sum(d * d)) for d in deltas)))
    if norm_bound is not None and norm > NORM_MARGIN * norm_bound:
        deltas = [d * (NORM_MARGIN * norm_bound / norm) for d in deltas]
    return [(a + d).astype(a.dtype) for a, d in zip(arrays, deltas, strict=True)]


def _average_popular(table: np.ndarray, popular: tuple[int, ...]) -> np.ndarray:
    """The popular items' mean row; for embeddings (width > 1) rescaled to their mean length,
    since the mean of many directions is shorter than any of them."""
    rows = table[list(popular)].astype(np.float64)
    mean = rows.mean(axis=0)
    if table.shape[1] == 1:
        return mean
    length = float(np.linalg.norm(mean))
    wanted = float(np.linalg.norm(rows, axis=1).mean())
    return mean * (wanted / length) if length > 0 else mean
