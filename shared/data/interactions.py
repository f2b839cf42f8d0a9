"""The interactions container: implicit feedback with dense ids, built one way from raw ids.

Everything is implicit feedback: each (user, item) row is a positive, whatever its rating.
Raw ids are remapped to dense ids ``0..n-1`` in sorted order of the raw ids, duplicate
(user, item) pairs keep their latest timestamp, and rows are sorted by (user, timestamp, item)
so the same input always yields the same arrays. Every file loader ends in :func:`from_arrays`,
so these rules hold whatever the format (the synthetic generator builds arrays that already
follow them).

Two facts about the source travel with the arrays because later steps depend on them: whether
it had timestamps at all (without them leave-one-out cannot hold out "the latest" item and draws
one at random, and the run says so), and its rating or count column, if any (``min-rating``
filters on it). A duplicate (user, item) pair keeps its largest rating, whatever the row order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interactions:
    """Implicit-feedback interactions with dense ids (every rating is a positive)."""

    user: np.ndarray  # int64, dense ids 0..num_users-1
    item: np.ndarray  # int64, dense ids 0..num_items-1
    timestamp: np.ndarray  # int64; 0 where the source has no timestamp
    num_users: int
    num_items: int
    raw_user_ids: np.ndarray  # dense id -> original id (int64 if all ids are integers, else str)
    raw_item_ids: np.ndarray
    # float64 rating, play or click count per row; None where the source has no such column
    rating: np.ndarray | None = None
    # False where the source has no timestamps (``timestamp`` is then all 0: every item ties)
    has_timestamps: bool = True

    def __len__(self) -> int:
        return int(self.user.shape[0])


def _as_id_array(values: Iterable[object] | np.ndarray, what: str) -> np.ndarray:
    """Normalise raw ids to a 1-D int64 array (integer ids) or a str array (anything else)."""
    arr = np.asarray(values if isinstance(values, np.ndarray) else list(values))
    arr = arr.reshape(-1)
    kind = arr.dtype.kind
    if kind in "iub":
        if kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
            return arr.astype(str)
        return arr.astype(np.int64)
    if kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.floor(arr)):
            raise ValueError(f"{what} ids are floats that are not all integral")
        return arr.astype(np.int64)
    if kind == "S":
        return arr.astype(str)
    if kind == "O":
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in arr):
            try:
                return arr.astype(np.int64)
            except OverflowError:
                pass
        return arr.astype(str)
    if kind == "U":
        return arr
    raise ValueError(f"unsupported dtype {arr.dtype} for {what} ids")


def _remap(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (dense ids, sorted unique raw ids); numeric order for ints, lexicographic for str."""
    if raw.size == 0:
        return np.zeros(0, np.int64), raw[:0].copy()
    if raw.dtype == np.int64:
        lo, hi = int(raw.min()), int(raw.max())
        # Bitmap lookup is O(n) and much faster than np.unique's sort when ids are compact.
        if lo >= 0 and hi <= 4 * raw.size + (1 << 20):
            present = np.zeros(hi + 1, dtype=bool)
            present[raw] = True
            uniques = np.flatnonzero(present).astype(np.int64)
            lut = np.empty(hi + 1, dtype=np.int64)
            lut[uniques] = np.arange(uniques.size, dtype=np.int64)
            return lut[raw], uniques
    uniques, inverse = np.unique(raw, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64), uniques


def _build(
    user: np.ndarray,
    item: np.ndarray,
    timestamp: np.ndarray,
    raw_user_ids: np.ndarray,
    raw_item_ids: np.ndarray,
    rating: np.ndarray | None = None,
    has_timestamps: bool = True,
) -> Interactions:
    """Merge duplicate (user, item) pairs (latest timestamp and largest rating win) and sort by
    (user, ts, item)."""
    num_users, num_items = int(raw_user_ids.size), int(raw_item_ids.size)
    if user.size:
        key = user * num_items + item
        order = np.argsort(key)
        key_sorted = key[order]
        starts = np.flatnonzero(np.r_[True, key_sorted[1:] != key_sorted[:-1]])
        user, item, ts_sorted = user[order], item[order], timestamp[order]
        rating = None if rating is None else rating[order]
        if starts.size != key.size:
            timestamp = np.maximum.reduceat(ts_sorted, starts)
            rating = None if rating is None else np.maximum.reduceat(rating, starts)
            user, item = user[starts], item[starts]
        else:
            timestamp = ts_sorted
        # Rows are now in (user, item) order, so a *stable* sort on (user, timestamp) yields
        # (user, timestamp, item) order; one int64 key is much faster than np.lexsort.
        t_min = int(timestamp.min())
        t_span = int(timestamp.max()) - t_min + 1
        if num_users * t_span < 2**62:
            order = np.argsort(user * t_span + (timestamp - t_min), kind="stable")
        else:
            order = np.lexsort((item, timestamp, user))
        user, item, timestamp = user[order], item[order], timestamp[order]
        rating = None if rating is None else rating[order]
    return Interactions(
        user=np.ascontiguousarray(user, dtype=np.int64),
        item=np.ascontiguousarray(item, dtype=np.int64),
        timestamp=np.ascontiguousarray(timestamp, dtype=np.int64),
        num_users=num_users,
        num_items=num_items,
        raw_user_ids=raw_user_ids,
        raw_item_ids=raw_item_ids,
        rating=None if rating is None else np.ascontiguousarray(rating, dtype=np.float64),
        has_timestamps=has_timestamps,
    )


def from_arrays(
    users: Sequence[object] | np.ndarray,
    items: Sequence[object] | np.ndarray,
    timestamps: Sequence[float] | np.ndarray | None = None,
    ratings: Sequence[float] | np.ndarray | None = None,
) -> Interactions:
    """Build :class:`Interactions` from raw ids (ints or strings), remapping them to dense ids.

    Integer ids (or integral floats) keep numeric order; anything else is treated as strings and
    ordered lexicographically. Missing timestamps become 0 (and ``has_timestamps`` False);
    ``ratings`` (ratings, play or click counts) are kept for filters, None when there are none.
    """
    raw_u = _as_id_array(users, "user")
    raw_i = _as_id_array(items, "item")
    if raw_u.size != raw_i.size:
        raise ValueError(f"users and items differ in length: {raw_u.size} != {raw_i.size}")
    if timestamps is None:
        ts = np.zeros(raw_u.size, dtype=np.int64)
    else:
        ts_arr = np.asarray(timestamps).reshape(-1)
        if ts_arr.size != raw_u.size:
            raise ValueError(f"timestamps length {ts_arr.size} != interactions {raw_u.size}")
        if ts_arr.dtype.kind == "f":
            if not np.all(np.isfinite(ts_arr)):
                raise ValueError("timestamps contain NaN or infinity")
            ts_arr = np.floor(ts_arr)
        ts = ts_arr.astype(np.int64)
    rating = None
    if ratings is not None:
        rating = np.asarray(ratings, dtype=np.float64).reshape(-1)
        if rating.size != raw_u.size:
            raise ValueError(f"ratings length {rating.size} != interactions {raw_u.size}")
    user, uniq_u = _remap(raw_u)
    item, uniq_i = _remap(raw_i)
    return _build(user, item, ts, uniq_u, uniq_i, rating, timestamps is not None)


def subset(data: Interactions, keep: np.ndarray) -> Interactions:
    """The rows where ``keep`` is True, with ids re-densified over the users and items left.

    Rows stay in (user, timestamp, item) order: dense ids are renumbered in their old order.
    """
    users_left = np.unique(data.user[keep])
    items_left = np.unique(data.item[keep])
    user_map = np.full(data.num_users, -1, dtype=np.int64)
    user_map[users_left] = np.arange(users_left.size)
    item_map = np.full(data.num_items, -1, dtype=np.int64)
    item_map[items_left] = np.arange(items_left.size)
    return Interactions(
        user=user_map[data.user[keep]],
        item=item_map[data.item[keep]],
        timestamp=data.timestamp[keep],
        num_users=int(users_left.size),
        num_items=int(items_left.size),
        raw_user_ids=data.raw_user_ids[users_left],
        raw_item_ids=data.raw_item_ids[items_left],
        rating=None if data.rating is None else data.rating[keep],
        has_timestamps=data.has_timestamps,
    )
