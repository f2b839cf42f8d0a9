"""Leave-one-out split, evaluation negatives and training negatives (docs/design.md §5).

Per-user randomness comes from :mod:`shared.streams` (seeded by ``(seed, purpose, user)``), so a
user's negatives and held-out item do not depend on any other user: a device can reproduce its
own evaluation set from its own data alone.

The held-out item is the user's latest interaction; when several share the latest timestamp (or
the data has no timestamps, so all of them do) it is a seeded uniform draw among them. Any fixed
rule instead (the largest item id, as before) makes the test set a biased slice of the catalogue
on such data: a popularity ranking then scored below random.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from shared.data import DataError, DataSource, Interactions
from shared.data.summary import DataSummary
from shared.streams import eval_negatives_rng, holdout_rng

if TYPE_CHECKING:
    from shared.config import RunConfig


@dataclass(frozen=True)
class LeaveOneOut:
    """Each user's latest interaction is held out; the rest is training data.

    Training items of user ``u`` are ``train_items[train_indptr[u]:train_indptr[u + 1]]``.
    """

    num_users: int
    num_items: int
    train_indptr: np.ndarray
    train_items: np.ndarray
    test_item: np.ndarray  # (num_users,)
    eval_negatives: np.ndarray  # (num_users, num_eval_negatives)
    # users whose held-out item was drawn among >= 2 tied latest interactions
    random_holdouts: int = 0

    def user_train_items(self, user: int) -> np.ndarray:
        return self.train_items[self.train_indptr[user] : self.train_indptr[user + 1]]

    def user_data(self, user: int) -> UserData:
        if not 0 <= user < self.num_users:
            raise IndexError(f"user {user} out of range: the split has {self.num_users} users")
        return UserData(
            num_items=self.num_items,
            train_items=self.user_train_items(user),
            test_item=int(self.test_item[user]),
            eval_negatives=self.eval_negatives[user],
        )

    @property
    def num_train(self) -> int:
        return len(self.train_items)


@dataclass(frozen=True)
class UserData:
    """What one device holds: its training items, held-out item and evaluation negatives."""

    num_items: int
    train_items: np.ndarray
    test_item: int
    eval_negatives: np.ndarray


def sample_excluding(
    rng: np.random.Generator, num_items: int, excluded: np.ndarray, count: int
) -> np.ndarray:
    """``count`` distinct items drawn uniformly from ``range(num_items)`` minus ``excluded``."""
    excluded = np.unique(excluded)
    allowed = num_items - len(excluded)
    if count > allowed:
        raise ValueError(
            f"cannot sample {count} negatives: only {allowed} of {num_items} items are allowed"
        )
    if 2 * len(excluded) > num_items:  # dense user: draw from the explicit complement
        return rng.choice(np.setdiff1d(np.arange(num_items), excluded), size=count, replace=False)
    # Sparse user (the usual case): rejection sampling avoids an O(num_items) pass per user.
    chosen = np.empty(0, dtype=np.int64)
    while len(chosen) < count:
        draws = rng.integers(0, num_items, size=2 * (count - len(chosen)) + 8)
        merged = np.concatenate([chosen, draws[~np.isin(draws, excluded)]])
        _, first = np.unique(merged, return_index=True)
        chosen = merged[np.sort(first)]  # distinct, in draw order
    return chosen[:count]


def leave_one_out(
    data: Interactions, *, num_eval_negatives: int = 99, seed: int = 0
) -> LeaveOneOut:
    """Hold out each user's latest interaction; among tied latest ones, a seeded uniform draw.

    Without timestamps every interaction ties, so the draw is uniform over the user's items.
    The draw comes from the user's own :func:`shared.streams.holdout_rng` and is taken only when
    there is a tie, so data with a unique latest interaction per user splits as it always did.
    Users with fewer than two interactions have nothing to train on and are rejected.
    """
    order = np.lexsort((data.item, data.timestamp, data.user))
    users, items, stamps = data.user[order], data.item[order], data.timestamp[order]
    counts = np.bincount(users, minlength=data.num_users)
    if (counts < 2).any():
        bad = np.flatnonzero(counts < 2)
        raise DataError(
            f"{len(bad)} users have fewer than 2 interactions (first: dense id {bad[0]}); "
            "leave-one-out needs one to hold out and one to train on: set "
            "min-user-interactions = 2 (or more) to drop them"
        )
    fewest_unseen = data.num_items - int(counts.max())
    if fewest_unseen < num_eval_negatives:
        raise DataError(
            f"a user has interacted with {int(counts.max())} of the {data.num_items} items, "
            f"leaving {fewest_unseen} to draw {num_eval_negatives} evaluation negatives from: "
            f"set eval-negatives = {max(fewest_unseen, 0)} or fewer, or use a larger catalogue"
        )
    ends = np.cumsum(counts)
    latest = stamps[ends - 1]  # rows are in (user, timestamp, item) order
    tied = np.bincount(users[stamps == latest[users]], minlength=data.num_users)
    test_at = ends - 1
    for user in np.flatnonzero(tied > 1):
        # the tied rows are the user's last `tied` rows, in item order: a uniform pick among them
        test_at[user] = ends[user] - tied[user] + holdout_rng(seed, int(user)).integers(tied[user])
    is_test = np.zeros(len(items), dtype=bool)
    is_test[test_at] = True
    test_item = items[is_test]
    train_items = items[~is_test]
    train_indptr = np.concatenate([[0], np.cumsum(counts - 1)])

    negatives = np.empty((data.num_users, num_eval_negatives), dtype=np.int64)
    starts = ends - counts
    for user in range(data.num_users):
        seen = items[starts[user] : ends[user]]
        rng = eval_negatives_rng(seed, user)
        negatives[user] = np.sort(sample_excluding(rng, data.num_items, seen, num_eval_negatives))
    return LeaveOneOut(
        num_users=data.num_users,
        num_items=data.num_items,
        train_indptr=train_indptr,
        train_items=train_items,
        test_item=test_item,
        eval_negatives=negatives,
        random_holdouts=int(np.count_nonzero(tied > 1)),
    )


def training_examples(
    train_items: np.ndarray, num_items: int, negatives_per_positive: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of (item, label) pairs for one user: every positive plus fresh negatives.

    Negatives are drawn uniformly, with replacement, from items outside the user's training
    set, as in the NCF reference (resampled every epoch: ``rng`` is the user's
    :func:`shared.streams.train_negatives_rng` of that round and epoch).
    """
    count = len(train_items) * negatives_per_positive
    allowed = num_items - len(train_items)
    if count and allowed <= 0:
        raise ValueError("the user interacted with every item: no negatives can be sampled")
    seen = np.zeros(num_items, dtype=bool)
    seen[train_items] = True
    negatives = rng.integers(0, num_items, size=count)
    # Redraw collisions until none remain: cheap since users touch few items.
    while True:
        clash = seen[negatives]
        if not clash.any():
            break
        negatives[clash] = rng.integers(0, num_items, size=int(clash.sum()))
    items = np.concatenate([train_items, negatives])
    labels = np.concatenate([np.ones(len(train_items)), np.zeros(count)]).astype(np.float32)
    return items, labels


@functools.lru_cache(maxsize=2)
def _cached_split(
    source: DataSource, eval_negatives: int
) -> tuple[LeaveOneOut, DataSummary, np.ndarray]:
    """Keyed by every data key (the filters too: they are :class:`DataSource` fields)."""
    data, report = source.prepare()
    split = leave_one_out(data, num_eval_negatives=eval_negatives, seed=source.seed)
    summary = DataSummary(
        dataset=source.dataset,
        data_dir=source.data_dir,
        has_timestamps=data.has_timestamps,
        has_ratings=data.rating is not None,
        users=split.num_users,
        items=split.num_items,
        train_interactions=split.num_train,
        random_holdouts=split.random_holdouts,
        filters=report,
    )
    return split, summary, data.raw_item_ids


def data_summary_for(config: RunConfig) -> DataSummary:
    """What the run's data is and how it was split (for the log and the run directory)."""
    return _cached_split(DataSource.of(config), config.eval_negatives)[1]


def split_for(config: RunConfig) -> LeaveOneOut:
    """The run's split, loaded once per process (simulated clients share an actor process).

    With ``audit-canaries`` the membership audit's canaries are in its training data
    (:mod:`shared.canaries`); :func:`base_split_for` is the split without them.
    """
    split = base_split_for(config)
    if config.audit_canaries:
        from shared.canaries import canary_split

        return canary_split(config, split)
    return split


def base_split_for(config: RunConfig) -> LeaveOneOut:
    """The run's split of its dataset, without any audit canaries."""
    split = _cached_split(DataSource.of(config), config.eval_negatives)[0]
    if config.num_items and config.num_items != split.num_items:
        from shared.config import ConfigError

        raise ConfigError(
            f"num-items is {config.num_items} but the dataset has {split.num_items} items: "
            "set num-items = 0 to derive it from the dataset, or point it at the right data"
        )
    return split


@functools.lru_cache(maxsize=2)
def _cached_features(source: DataSource, eval_negatives: int, item_features: str):
    from shared.data.item_features import load_item_features, movielens_catalogue

    raw_item_ids = _cached_split(source, eval_negatives)[2]
    path = movielens_catalogue(source.data_dir) if item_features == "movielens" else item_features
    return load_item_features(path, raw_item_ids)


def item_features_for(config: RunConfig) -> np.ndarray:
    """The run's public item features, one row per dense item id (``item-features``).

    Rows are placed by the dataset's dense->raw item mapping, so every side that builds the
    model needs the dataset's item list (a simulation has it; a deployment would ship the
    catalogue and its mapping, which is not built yet: docs/design.md §10).
    """
    return _cached_features(
        DataSource.of(config), config.eval_negatives, config.item_features
    ).matrix


def catalog_size(config: RunConfig) -> int:
    """Number of items in the catalogue (public: the item list, not anyone's interactions).

    ``num-items`` when set (a deployed server and its devices have no dataset); otherwise read
    off the dataset, which a simulation has on disk anyway.
    """
    return config.num_items or split_for(config).num_items
