"""The filters before the split: min-rating, then the k-core of min-user/min-item-interactions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from shared.config import ConfigError
from shared.data import DataError, DataSource, filter_interactions, from_arrays, synthetic
from shared.data.filters import k_core_mask
from shared.split import data_summary_for, split_for
from tests.conftest import small_config
from tests.shared.data_golden import FIXTURES


def core(data, min_user=2, min_item=1, min_rating=0.0):
    return filter_interactions(data, min_rating=min_rating, min_user=min_user, min_item=min_item)


def test_k_core_applies_both_minimums_until_stable() -> None:
    # With min-item 2, items 7 (only b) and 8 (only c) go; then b and c have one interaction
    # each (item 9) and go, which leaves item 9 nobody: the core is {a, d} x {1, 2}, after two
    # passes that drop rows and a third that finds it stable.
    users = ["a", "a", "d", "d", "b", "b", "c", "c"]
    items = [1, 2, 1, 2, 9, 7, 9, 8]
    data = from_arrays(users, items, ratings=[1, 2, 3, 4, 5, 6, 7, 8])
    out, report = core(data, min_user=2, min_item=2)
    assert out.raw_user_ids.tolist() == ["a", "d"]
    assert out.raw_item_ids.tolist() == [1, 2]
    assert len(out) == 4 and out.rating.tolist() == [1, 2, 3, 4]
    assert (report.users_dropped, report.items_dropped, report.interactions_dropped) == (2, 3, 4)
    assert report.rounds == 3
    assert "dropped 2 users, 3 items, 4 interactions" in report.describe()


def test_k_core_is_the_largest_subset_meeting_both_minimums() -> None:
    # Invariant and maximality, against brute force over every subset of users on small data.
    rng = np.random.default_rng(0)
    nonempty = 0
    for trial in range(25):
        n = int(rng.integers(4, 16))
        data = from_arrays(rng.integers(0, 6, n), rng.integers(0, 5, n))
        min_user, min_item = int(rng.integers(2, 4)), int(rng.integers(1, 3))
        keep, _ = k_core_mask(data, min_user, min_item, np.ones(len(data), dtype=bool))
        best = 0  # the largest valid set of rows: every (users, items) choice, brute force
        for us in itertools.product([False, True], repeat=data.num_users):
            for its in itertools.product([False, True], repeat=data.num_items):
                rows = np.asarray(us)[data.user] & np.asarray(its)[data.item]
                u = np.bincount(data.user[rows], minlength=data.num_users)[data.user[rows]]
                i = np.bincount(data.item[rows], minlength=data.num_items)[data.item[rows]]
                if np.all(u >= min_user) and np.all(i >= min_item):
                    best = max(best, int(rows.sum()))
        assert keep.sum() == best, trial
        nonempty += best > 0
        if keep.any():
            u = np.bincount(data.user[keep])
            i = np.bincount(data.item[keep])
            assert u[u > 0].min() >= min_user and i[i > 0].min() >= min_item
    assert 5 <= nonempty <= 20  # both empty and non-empty cores were checked


def test_nothing_dropped_keeps_the_data_as_it_is() -> None:
    # synthetic data keeps items nobody drew: a default run's catalogue must not change
    data = synthetic(30, 200, 4)
    out, report = core(data)
    assert out is data
    assert report.users_dropped == report.items_dropped == report.interactions_dropped == 0


def test_min_rating_keeps_rows_at_or_above_it() -> None:
    data = from_arrays([1, 1, 1, 2, 2, 2], [5, 6, 7, 5, 6, 7], ratings=[4, 3.5, 1, 5, 4, 2])
    out, report = core(data, min_rating=3.5)
    assert out.raw_item_ids[out.item].tolist() == [5, 6, 5, 6]
    assert out.raw_item_ids.tolist() == [5, 6]  # item 7 lost its last rating >= 3.5
    assert report.interactions_dropped == 2 and report.items_dropped == 1


def test_min_rating_needs_a_rating_column() -> None:
    with pytest.raises(DataError, match="no rating or count column: set min-rating = 0"):
        core(from_arrays([1, 1], [1, 2]), min_rating=1)


def test_filtering_everything_away_says_which_keys_to_lower() -> None:
    with pytest.raises(DataError, match="no interactions are left.*lower min-user-interactions"):
        core(from_arrays([1, 2], [1, 2]))


def test_count_file_without_timestamps_loads_filters_and_splits() -> None:
    config = small_config(dataset="csv", data_dir=str(FIXTURES / "plays.tsv"), eval_negatives=5)
    raw = DataSource.of(config).load_unfiltered()
    assert not raw.has_timestamps and raw.rating is not None  # the counts are kept
    single = np.bincount(raw.user) == 1
    assert single.sum() == 3  # u21, u22, u23 played one track each
    split = split_for(config)
    summary = data_summary_for(config)
    assert split.num_users == raw.num_users - 3
    assert split.num_items == raw.num_items - 1  # item 999: only u23 played it
    assert summary.filters.users_dropped == 3 and summary.filters.interactions_dropped == 3
    assert not summary.has_timestamps and summary.random_holdouts == split.num_users
    assert summary.to_json()["holdout"] == "random"
    assert "random: no timestamps" in summary.lines()[0]
    # a stricter filter is another split (the cache key holds the filter keys)
    stricter = small_config(
        dataset="csv", data_dir=config.data_dir, eval_negatives=5, min_item_interactions=3
    )
    assert split_for(stricter) is not split_for(config)
    assert split_for(stricter).num_items < split.num_items


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"min_user_interactions": 1}, "min-user-interactions must be at least 2"),
        ({"min_item_interactions": 0}, "min-item-interactions must be at least 1"),
        ({"min_rating": -1.0}, "min-rating must be 0"),
        ({"min_rating": float("nan")}, "min-rating must be a finite number"),
    ],
)
def test_filter_keys_are_validated(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        small_config(**changes)
