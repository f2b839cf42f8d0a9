"""Filters applied to a run's interactions before the split: a minimum rating, then a k-core.

Real files have users with one interaction (nothing left to train on once one is held out) and
items nobody else touched; leave-one-out needs every user to keep at least two. Filtering is a
run's choice (``min-rating``, ``min-user-interactions``, ``min-item-interactions``), so it is
done here, from the config, and reported (what was dropped), never silently by a loader.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.data.interactions import Interactions, subset


class DataError(ValueError):
    """The data cannot make a run (e.g. nothing is left after filtering); says what to change."""


@dataclass(frozen=True)
class FilterReport:
    """What the filters kept and dropped (users, items, interactions), for the log and data.json."""

    min_rating: float
    min_user_interactions: int
    min_item_interactions: int
    users_before: int
    items_before: int
    interactions_before: int
    users_after: int
    items_after: int
    interactions_after: int
    rounds: int  # passes until the k-core was stable

    @property
    def users_dropped(self) -> int:
        return self.users_before - self.users_after

    @property
    def items_dropped(self) -> int:
        return self.items_before - self.items_after

    @property
    def interactions_dropped(self) -> int:
        return self.interactions_before - self.interactions_after

    def describe(self) -> str:
        """One log line: the thresholds and what they dropped."""
        rule = (
            f"min-user-interactions {self.min_user_interactions}, "
            f"min-item-interactions {self.min_item_interactions}, min-rating {self.min_rating:g}"
        )
        return (
            f"filters ({rule}) dropped {self.users_dropped} users, {self.items_dropped} items, "
            f"{self.interactions_dropped} interactions; kept {self.users_after} users, "
            f"{self.items_after} items, {self.interactions_after} interactions"
        )

    def to_json(self) -> dict[str, float | int]:
        return {
            "min_rating": self.min_rating,
            "min_user_interactions": self.min_user_interactions,
            "min_item_interactions": self.min_item_interactions,
            "users_dropped": self.users_dropped,
            "items_dropped": self.items_dropped,
            "interactions_dropped": self.interactions_dropped,
            "k_core_passes": self.rounds,
        }


def k_core_mask(
    data: Interactions, min_user: int, min_item: int, keep: np.ndarray
) -> tuple[np.ndarray, int]:
    """Rows left once every user has >= ``min_user`` and every item >= ``min_item`` of them.

    Dropping a user can push an item below its minimum and back, so the two are applied in turn
    until neither drops a row (the k-core: unique, whatever the order). Returns the mask and the
    number of passes.
    """
    user, item = data.user, data.item
    keep = keep.copy()
    passes = 0
    while True:
        passes += 1
        user_counts = np.bincount(user[keep], minlength=data.num_users)
        item_counts = np.bincount(item[keep], minlength=data.num_items)
        ok = keep & (user_counts[user] >= min_user) & (item_counts[item] >= min_item)
        if np.array_equal(ok, keep):
            return keep, passes
        keep = ok


def filter_interactions(
    data: Interactions, *, min_rating: float, min_user: int, min_item: int
) -> tuple[Interactions, FilterReport]:
    """Keep the rows rated at least ``min_rating`` (0: all), then the (min_user, min_item) core.

    When nothing is dropped the data is returned as it is (ids and catalogue unchanged: synthetic
    data keeps items nobody drew); otherwise ids are renumbered over what is left.
    """
    keep = np.ones(len(data), dtype=bool)
    if min_rating > 0:
        if data.rating is None:
            raise DataError(
                f"min-rating is {min_rating:g} but this data has no rating or count column: "
                "set min-rating = 0 (keep every interaction), or use a file with ratings"
            )
        keep &= data.rating >= min_rating  # NaN ratings are below every minimum
    keep, passes = k_core_mask(data, min_user, min_item, keep)
    out = data if keep.all() else subset(data, keep)
    report = FilterReport(
        min_rating=min_rating,
        min_user_interactions=min_user,
        min_item_interactions=min_item,
        users_before=data.num_users,
        items_before=data.num_items,
        interactions_before=len(data),
        users_after=out.num_users,
        items_after=out.num_items,
        interactions_after=len(out),
        rounds=passes,
    )
    if not len(out):
        raise DataError(
            f"no interactions are left after filtering ({report.describe()}): lower "
            "min-user-interactions, min-item-interactions or min-rating"
        )
    return out, report
