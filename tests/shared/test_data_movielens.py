"""Tests for shared.data.movielens: the MovieLens formats (golden fixtures, real data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.data import (
    DataFormatError,
    load_ml100k,
    load_ml_dat,
)
from tests.shared.data_golden import FIXTURES, ML100K_GOLDEN, assert_golden, write

ML100K_REAL = Path(__file__).resolve().parents[2].parent / "shared/data/ml-100k"


@pytest.mark.parametrize("path", [FIXTURES / "ml100k", FIXTURES / "ml100k" / "u.data"])
def test_load_ml100k_golden(path: Path) -> None:
    data = load_ml100k(path)
    assert_golden(data, **ML100K_GOLDEN)
    assert data.raw_user_ids.dtype == np.int64


def test_whitespace_only_lines_bom_and_crlf_are_tolerated(tmp_path: Path) -> None:
    # Whitespace-only lines make the fast C reader fail; the slow path must still accept them.
    body = "3\t100\t4\t300\r\n   \r\n1\t20\t5\t100\r\n1\t10\t3\t200\r\n2\t5\t1\t50\r\n"
    body += "1\t20\t2\t150\r\n\t\r\n3\t7\t5\t300\r\n\r\n"
    path = tmp_path / "u.data"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert_golden(load_ml100k(path), **ML100K_GOLDEN)


def test_bad_line_deep_in_large_file_is_found(tmp_path: Path) -> None:
    good = "".join(f"{u}::{u % 97}::3::{1000 + u}\n" for u in range(20_000))
    path = write(tmp_path, "ratings.dat", good + "5::6::3\n" + good)
    with pytest.raises(DataFormatError, match="line 20001:"):
        load_ml_dat(path)
    assert len(load_ml_dat(write(tmp_path, "ok.dat", good))) == 20_000


@pytest.mark.skipif(not (ML100K_REAL / "u.data").is_file(), reason="MovieLens-100K not present")
def test_real_ml100k() -> None:
    data = load_ml100k(ML100K_REAL)
    assert (data.num_users, data.num_items, len(data)) == (943, 1682, 100_000)
    assert data.raw_user_ids.tolist() == list(range(1, 944))
    assert data.raw_item_ids.tolist() == list(range(1, 1683))
    assert np.all(np.diff(data.user) >= 0)
    assert np.bincount(data.user).min() >= 20
