"""Canaries for the membership audit: training data the auditor plants and the attacker must find.

The one-run audit (:mod:`shared.one_run_audit`; docs/design.md §4, "Membership audit") needs m
canaries, each included in training independently with probability 1/2. The coins and the
canaries' items come from the run seed's ``AUDIT_CANARIES`` stream: the auditor recomputes them
after the run (:func:`draw_canaries` on the split without canaries), the attacker never uses
them. A canary is one unit of the guarantee under audit:

- ``user``: a canary device holding ``audit-canary-items`` items drawn uniformly from the
  catalogue (plus one held-out item, so it splits and evaluates like any device). An included
  canary is an extra device of the federation; an excluded one does not exist in the run.
- ``interaction``: one interaction added to the training data of each of m real devices, an
  item the device never interacted with and that is not among its evaluation negatives, so real
  users' held-out evaluation is unchanged.

Canaries are training data only: the real users' held-out items and evaluation negatives are
the same with and without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from shared.streams import Stream, generator

if TYPE_CHECKING:
    from shared.config import RunConfig
    from shared.split import LeaveOneOut

# Sub-streams of Stream.AUDIT_CANARIES (from 1: a seed tuple must not end in a zero).
_COINS, _ITEMS, REFERENCE = 1, 2, 3


@dataclass(frozen=True)
class Canaries:
    """The m canaries of a run, as the auditor knows them.

    ``device[i]`` is the dense user id that holds canary i in the split with canaries: the
    canary device itself (user level; -1 when excluded: it does not exist) or the real device
    it was added to (interaction level, included or not). ``items[i]`` are canary i's training
    items: ``audit-canary-items`` of them (user level) or the one canary interaction.
    """

    unit: str
    included: np.ndarray  # (m,) bool: the coins
    device: np.ndarray  # (m,) int
    items: np.ndarray  # (m, k) user level; (m, 1) interaction level
    heldout: np.ndarray  # (m,) user level: each canary device's held-out item; else empty

    @property
    def count(self) -> int:
        return len(self.included)


def draw_canaries(
    split: LeaveOneOut, seed: int, count: int, items_per_canary: int, unit: str
) -> Canaries:
    """The run's canaries, drawn from the split WITHOUT canaries (deterministic by seed)."""
    from shared.config import ConfigError
    from shared.split import sample_excluding

    included = generator(seed, Stream.AUDIT_CANARIES, _COINS).random(count) < 0.5
    rng = generator(seed, Stream.AUDIT_CANARIES, _ITEMS)
    eval_negatives = split.eval_negatives.shape[1]
    if unit == "user":
        if items_per_canary + 1 + eval_negatives > split.num_items:
            raise ConfigError(
                f"a canary device needs audit-canary-items {items_per_canary} + 1 held-out + "
                f"{eval_negatives} evaluation negatives distinct items, but the catalogue has "
                f"{split.num_items}: lower audit-canary-items or eval-negatives"
            )
        drawn = np.stack(
            [
                rng.choice(split.num_items, size=items_per_canary + 1, replace=False)
                for _ in range(count)
            ]
        )
        device = np.full(count, -1, dtype=np.int64)
        device[included] = split.num_users + np.arange(int(included.sum()))
        return Canaries(unit, included, device, drawn[:, :-1], drawn[:, -1])
    if unit != "interaction":
        raise ConfigError(f"audit-canary-unit must be user or interaction, got {unit!r}")
    if count > split.num_users:
        raise ConfigError(
            f"audit-canaries {count} at the interaction level needs as many devices, but the "
            f"data has {split.num_users} users: set audit-canaries = {split.num_users} or fewer"
        )
    device = rng.permutation(split.num_users)[:count].astype(np.int64)
    items = np.empty((count, 1), dtype=np.int64)
    for i, user in enumerate(device):
        seen = np.concatenate(
            [
                split.user_train_items(int(user)),
                [split.test_item[user]],
                split.eval_negatives[user],
            ]
        )
        items[i] = sample_excluding(rng, split.num_items, seen, 1)
    return Canaries(unit, included, device, items, np.empty(0, dtype=np.int64))


def with_canaries(split: LeaveOneOut, canaries: Canaries, seed: int) -> LeaveOneOut:
    """The split with the included canaries in its training data (real users' tests unchanged)."""
    from shared.split import LeaveOneOut, sample_excluding

    per_user = [split.user_train_items(u) for u in range(split.num_users)]
    test_item, negatives = split.test_item, split.eval_negatives
    if canaries.unit == "user":
        chosen = np.flatnonzero(canaries.included)
        per_user += [canaries.items[i] for i in chosen]
        test_item = np.concatenate([test_item, canaries.heldout[chosen]])
        extra = [
            np.sort(
                sample_excluding(
                    generator(seed, Stream.AUDIT_CANARIES, _ITEMS, int(i) + 1),
                    split.num_items,
                    np.append(canaries.items[i], canaries.heldout[i]),
                    negatives.shape[1],
                )
            )
            for i in chosen
        ]
        negatives = np.concatenate(
            [negatives, np.array(extra, dtype=np.int64).reshape(-1, negatives.shape[1])]
        )
    else:
        for i in np.flatnonzero(canaries.included):
            user = int(canaries.device[i])
            per_user[user] = np.append(per_user[user], canaries.items[i])
    counts = np.array([len(items) for items in per_user], dtype=np.int64)
    return LeaveOneOut(
        num_users=len(per_user),
        num_items=split.num_items,
        train_indptr=np.concatenate([[0], np.cumsum(counts)]),
        train_items=np.concatenate(per_user).astype(np.int64),
        test_item=test_item,
        eval_negatives=negatives,
        random_holdouts=split.random_holdouts,
    )


def canaries_for(config: RunConfig, base: LeaveOneOut) -> Canaries:
    """The canaries a run config asks for, on its split without canaries."""
    return draw_canaries(
        base,
        config.seed,
        config.audit_canaries,
        config.audit_canary_items,
        config.audit_canary_unit,
    )


def canary_split(config: RunConfig, base: LeaveOneOut) -> LeaveOneOut:
    """The run's split with its canaries, built once per process (every device asks for it)."""
    key = (config.seed, config.audit_canaries, config.audit_canary_items, config.audit_canary_unit)
    hit = _LATEST.get(key)
    if hit is not None and hit[0] is base:  # the very same base split (the split's own cache)
        return hit[1]
    split = with_canaries(base, canaries_for(config, base), config.seed)
    _LATEST.clear()  # one run per process: keep the latest only
    _LATEST[key] = (base, split)
    return split


_LATEST: dict[tuple, tuple[LeaveOneOut, LeaveOneOut]] = {}
