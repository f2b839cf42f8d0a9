"""Tests for shared.data.generator: the seeded synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from shared.data import (
    generator,
    synthetic,
)


def test_synthetic_deterministic_per_seed() -> None:
    a, b, c = synthetic(seed=1), synthetic(seed=1), synthetic(seed=2)
    for field in ("user", "item", "timestamp"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert len(a) != len(c) or not np.array_equal(a.item, c.item)


def test_synthetic_invariants() -> None:
    data = synthetic(300, 500, 0)
    assert (data.num_users, data.num_items) == (300, 500)
    assert data.raw_user_ids.tolist() == list(range(300))
    assert data.raw_item_ids.tolist() == list(range(500))
    for arr in (data.user, data.item, data.timestamp):
        assert arr.dtype == np.int64 and arr.shape == (len(data),)
    assert data.item.min() >= 0 and data.item.max() < 500
    per_user = np.bincount(data.user, minlength=300)
    assert per_user.min() >= 10 and per_user.max() <= 150
    # no duplicate pairs; sorted by user then strictly increasing time
    assert np.unique(data.user * 500 + data.item).size == len(data)
    same_user = data.user[1:] == data.user[:-1]
    assert np.all(np.diff(data.user) >= 0)
    assert np.all(np.diff(data.timestamp)[same_user] > 0)


def test_synthetic_structure_popularity_and_activity() -> None:
    data = synthetic(300, 500, 0)
    item_counts = np.bincount(data.item, minlength=500)
    assert item_counts.max() >= 5 * np.median(item_counts)  # heavy-headed popularity
    per_user = np.bincount(data.user)
    assert per_user.max() >= 4 * per_user.min() and per_user.std() > 10  # activity varies
    # Taste matters: users' item sets are far from identical top-popularity lists.
    top = set(np.argsort(-item_counts)[:20].tolist())
    overlap = [len(top & set(data.item[data.user == u].tolist())) for u in range(300)]
    assert np.mean(overlap) < 15


def test_synthetic_leaves_room_for_negatives() -> None:
    data = synthetic(50, 130, 0)  # cap = 130 - 100 = 30, below MAX_PER_USER
    per_user = np.bincount(data.user)
    assert per_user.max() <= 30 and per_user.min() >= 10
    small = synthetic(20, 30, 0)  # <= 110 items: cap n-1
    assert np.bincount(small.user).max() <= 29
    with pytest.raises(ValueError, match="minimum of 10: set synthetic-items to at least 11"):
        synthetic(10, 10, 0)  # cap 9 < MIN_PER_USER
    # The shape is fixed, not an option: every user has one to hold out and one to train on.
    assert generator.MIN_PER_USER >= 2 and generator.MAX_PER_USER >= generator.MIN_PER_USER


def test_synthetic_scales() -> None:
    data = synthetic(2000, 3000, 5)
    assert data.num_users == 2000 and np.bincount(data.user).min() >= 10


def test_the_default_shape_is_unchanged_byte_for_byte() -> None:
    # Every seeded synthetic result so far was measured on it: adding shapes must not move it.
    import hashlib

    data = synthetic(300, 500, 0)
    blob = data.item.tobytes() + data.user.tobytes() + data.timestamp.tobytes()
    assert hashlib.sha256(blob).hexdigest()[:16] == "8cb80bf7744af1e6"
    assert synthetic(300, 500, 0, "default").item.tobytes() == data.item.tobytes()


def test_the_movielens_shape_has_ml_100ks_marginals() -> None:
    from simulations.research.data_shape import shape_of

    data = synthetic(943, 1682, 0, "movielens")
    shape = shape_of(data)
    per_user = np.bincount(data.user)
    assert per_user.min() >= 20 and per_user.max() <= 740  # ML-100K: 20 and 737
    # ML-100K: log items-per-user mean 4.27 / sd 0.88; 0.427 of the interactions on the top
    # 10% of items; Gini of item degrees 0.629 (simulations/research/data_shape.py)
    assert abs(shape["per_user_log_mean"] - 4.27) < 0.1
    assert 0.7 < shape["per_user_log_sd"] < 0.95
    assert abs(shape["top_item_share"]["0.1"] - 0.427) < 0.03
    assert abs(shape["item_gini"] - 0.629) < 0.05
    assert shape["popularity_hr10"] > 0.3  # popularity is learnable structure, not noise
    again = synthetic(943, 1682, 0, "movielens")
    assert again.item.tobytes() == data.item.tobytes()  # seeded


def test_an_unknown_shape_is_refused_naming_the_shapes() -> None:
    with pytest.raises(ValueError, match="synthetic-shape must be one of default, movielens"):
        synthetic(30, 200, 0, "netflix")
    small = synthetic(30, 21, 0, "movielens")  # 21 items: a cap of 20 a user, the minimum
    assert np.bincount(small.user).min() == 20
    with pytest.raises(ValueError, match="set synthetic-items to at least 21"):
        synthetic(30, 20, 0, "movielens")
