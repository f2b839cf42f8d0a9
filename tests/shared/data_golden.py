"""Golden-fixture helpers shared by the shared.data tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from shared.data import Interactions

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

Loader = Callable[[Path], Interactions]


def assert_golden(
    data: Interactions,
    user: list[int],
    item: list[int],
    timestamp: list[int],
    raw_users: list[object],
    raw_items: list[object],
) -> None:
    for arr in (data.user, data.item, data.timestamp):
        assert arr.dtype == np.int64
    assert data.user.tolist() == user
    assert data.item.tolist() == item
    assert data.timestamp.tolist() == timestamp
    assert data.raw_user_ids.tolist() == raw_users
    assert data.raw_item_ids.tolist() == raw_items
    assert data.num_users == len(raw_users)
    assert data.num_items == len(raw_items)
    assert len(data) == len(user)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


ML100K_GOLDEN = dict(
    user=[0, 0, 1, 2, 2],
    item=[3, 2, 0, 1, 4],
    timestamp=[150, 200, 50, 300, 300],  # (1, 20) kept its later timestamp 150
    raw_users=[1, 2, 3],
    raw_items=[5, 7, 10, 20, 100],  # numeric, not lexicographic, order
)
