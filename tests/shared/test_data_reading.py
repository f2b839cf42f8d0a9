"""Tests for shared.data.reading: malformed input names the file, the line and what was
expected (every loader)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from shared.data import (
    DataFormatError,
    load_csv,
    load_ml100k,
    load_ml_dat,
    load_movielens_csv,
)
from tests.shared.data_golden import FIXTURES, Loader, write


@pytest.mark.parametrize(
    ("loader", "path", "line", "fragment"),
    [
        (load_ml100k, FIXTURES / "malformed/ml100k_bad_fields", 3, "got 3"),
        (load_ml_dat, FIXTURES / "malformed/ratings_bad_id.dat", 2, "'x' is not an integer"),
        (load_movielens_csv, FIXTURES / "malformed/ratings_bad_timestamp.csv", 3, "timestamp"),
        (load_movielens_csv, FIXTURES / "malformed/ratings_missing_column.csv", 1, "timestamp"),
        (load_csv, FIXTURES / "malformed/empty.csv", 1, "empty"),
    ],
)
def test_malformed_fixtures(loader: Loader, path: Path, line: int, fragment: str) -> None:
    with pytest.raises(DataFormatError) as info:
        loader(path)
    err = info.value
    message = str(err)
    assert err.line_number == line
    assert f"line {line}:" in message
    assert (path.name if path.is_file() else "u.data") in message
    assert fragment in message
    assert "expected" in message


@pytest.mark.parametrize(
    ("loader", "name", "text", "line", "fragment"),
    [
        (load_ml100k, "u.data", "1\t2\t3\t4\n1\t2\tbad\t4\n", 2, "rating 'bad'"),
        (load_ml100k, "u.data", "1\t2\t3\t4\n\n\n1 2 3 4\n", 4, "got 1"),
        (load_ml100k, "u.data", "1\t2\t3\t4\n1\t2\t3\t4.5\n", 2, "timestamp '4.5'"),
        (load_ml100k, "u.data", "1\tab\t3\t4\n", 1, "item id 'ab'"),
        (load_ml100k, "u.data", "\n\n", 3, "no data rows"),
        (load_ml_dat, "ratings.dat", "1::2::3::4\n1\t2\t3\t4\n", 2, "got 1"),
        (load_ml_dat, "ratings.dat", "1::2::3::4\n1:::2::3::4\n", 2, "item id ':2'"),
        (load_ml_dat, "ratings.dat", "1::2::3::4::5\n", 1, "got 5"),
        (load_movielens_csv, "ratings.csv", "", 1, "empty"),
        (load_movielens_csv, "ratings.csv", "userId,movieId,rating,timestamp\n", 2, "no data"),
        (load_movielens_csv, "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3\n", 2, "got 3"),
        (load_movielens_csv, "ratings.csv", "userId,movieId,rating,timestamp,x\n1,2,3,4\n", 2, "5"),
        (load_csv, "g.csv", "u,i,r\n1,2,3\n1,2,x\n", 3, "rating 'x'"),
        (load_csv, "g.csv", "1,2,3,4\n1,2,3,nan\n", 2, "timestamp 'nan'"),
        (load_csv, "g.csv", "1,2,3,4\n1,2,3\n", 2, "got 3"),
        (load_csv, "g.csv", "1,2,3,4,5\n", 1, "cannot tell user and item"),
        (load_csv, "g.csv", "a,b\n,2\n", 2, "user id is empty"),
        (load_csv, "g.csv", "user,item\n", 2, "no data rows"),
    ],
)
def test_malformed_inputs_report_file_and_line(
    tmp_path: Path, loader: Loader, name: str, text: str, line: int, fragment: str
) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(DataFormatError) as info:
        loader(path)
    message = str(info.value)
    assert str(path) in message
    assert f"line {line}:" in message
    assert fragment in message


def test_data_format_error_pickles_and_is_value_error() -> None:
    err = DataFormatError("x/u.data", 7, "bad", "1 2", "four fields")
    clone = pickle.loads(pickle.dumps(err))
    assert isinstance(clone, ValueError)
    assert (clone.path, clone.line_number, str(clone)) == ("x/u.data", 7, str(err))


def test_error_snippet_is_truncated(tmp_path: Path) -> None:
    path = write(tmp_path, "u.data", "1\t2\t3\t4\n" + "9" * 500 + "\n")
    with pytest.raises(DataFormatError) as info:
        load_ml100k(path)
    assert len(str(info.value)) < 400
    assert "..." in str(info.value)
