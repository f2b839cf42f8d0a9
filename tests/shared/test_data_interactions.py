"""Tests for shared.data.interactions: raw ids to dense ids, dedupe and order."""

from __future__ import annotations

import numpy as np
import pytest

from shared.data import (
    from_arrays,
)


def test_from_arrays_string_ids_and_defaults() -> None:
    data = from_arrays(["b", "a", "b", "10"], ["x", "y", "y", "x"])
    assert data.raw_user_ids.tolist() == ["10", "a", "b"]  # lexicographic for strings
    assert data.timestamp.tolist() == [0, 0, 0, 0]
    assert data.user.tolist() == [0, 1, 2, 2]
    assert data.item.tolist() == [0, 1, 0, 1]


def test_from_arrays_integral_floats_and_errors() -> None:
    assert from_arrays(np.array([2.0, 1.0]), [1, 1]).raw_user_ids.dtype == np.int64
    with pytest.raises(ValueError, match="integral"):
        from_arrays([1.5], [1])
    with pytest.raises(ValueError, match="length"):
        from_arrays([1, 2], [1])
    empty = from_arrays([], [])
    assert len(empty) == 0 and empty.num_users == 0 and empty.num_items == 0


def test_large_sparse_ids_use_unique_path() -> None:
    data = from_arrays([10**15, 3, -4], [2**40, 5, 5])
    assert data.raw_user_ids.tolist() == [-4, 3, 10**15]
    assert data.raw_item_ids.tolist() == [5, 2**40]
