"""Tests for shared.data: loaders (golden fixtures), error reporting, synthetic generator."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from shared.data import (
    DATASETS,
    DataFormatError,
    Interactions,
    from_arrays,
    generator,
    load_csv,
    load_dataset,
    load_ml100k,
    load_ml_dat,
    load_movielens_csv,
    synthetic,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ML100K_REAL = Path(__file__).resolve().parents[2].parent / "shared/data/ml-100k"

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


# --------------------------------------------------------------------------- golden loaders

ML100K_GOLDEN = dict(
    user=[0, 0, 1, 2, 2],
    item=[3, 2, 0, 1, 4],
    timestamp=[150, 200, 50, 300, 300],  # (1, 20) kept its later timestamp 150
    raw_users=[1, 2, 3],
    raw_items=[5, 7, 10, 20, 100],  # numeric, not lexicographic, order
)


@pytest.mark.parametrize("path", [FIXTURES / "ml100k", FIXTURES / "ml100k" / "u.data"])
def test_load_ml100k_golden(path: Path) -> None:
    data = load_ml100k(path)
    assert_golden(data, **ML100K_GOLDEN)
    assert data.raw_user_ids.dtype == np.int64


def test_load_ml_dat_golden() -> None:
    data = load_ml_dat(FIXTURES / "ml1m")
    assert_golden(
        data,
        user=[0, 0, 1, 1],
        item=[0, 1, 0, 1],
        timestamp=[978300275, 978301968, 978300760, 978302109],  # duplicate kept the latest
        raw_users=[2, 10],
        raw_items=[1, 3],
    )


def test_load_movielens_csv_golden() -> None:
    data = load_movielens_csv(FIXTURES / "mlcsv")
    assert_golden(
        data,
        user=[0, 0, 1],
        item=[1, 0, 0],
        timestamp=[1147868817, 1147880044, 1147868828],
        raw_users=[1, 2],
        raw_items=[296, 306],
    )


def test_load_movielens_csv_reordered_and_extra_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "ratings.csv",
        "\n\ntimestamp,rating,movieId,userId,tag\n5,1.0,30,7,x\n4,2.0,10,7,y\n\n9,3,10,8,z\n",
    )
    assert_golden(
        load_movielens_csv(path),
        user=[0, 0, 1],
        item=[0, 1, 0],
        timestamp=[4, 5, 9],
        raw_users=[7, 8],
        raw_items=[10, 30],
    )
    same_order = write(tmp_path, "r2.csv", "\ntimestamp,rating,movieId,userId\n5,1.0,30,7\n")
    assert load_movielens_csv(same_order).timestamp.tolist() == [5]


def test_load_csv_header_string_ids_and_dedupe() -> None:
    data = load_csv(FIXTURES / "generic_with_header.csv")
    assert_golden(
        data,
        user=[0, 0, 1, 2],
        item=[1, 0, 0, 1],
        timestamp=[100, 120, 50, 10],  # (alice, matrix) at 100 and 90 -> 100
        raw_users=["alice", "bob", "carol"],
        raw_items=["alien", "matrix"],
    )
    assert data.raw_user_ids.dtype.kind == "U"


def test_load_csv_tsv_without_header_or_timestamp() -> None:
    assert_golden(
        load_csv(FIXTURES / "generic.tsv"),
        user=[0, 1, 1],
        item=[1, 0, 1],
        timestamp=[0, 0, 0],
        raw_users=[3, 5],
        raw_items=[11, 12],
    )


def test_load_csv_semicolon_header_picks_columns_by_name() -> None:
    assert_golden(
        load_csv(FIXTURES / "generic_semicolon.csv"),
        user=[0, 0, 1],
        item=[0, 1, 0],
        timestamp=[10, 20, 30],
        raw_users=["u1", "u2"],
        raw_items=["i1", "i2"],
    )


@pytest.mark.parametrize(
    ("text", "delimiter", "header"),
    [
        ("1,10,5,100\n2,20,4,200\n", None, False),
        ("u,i,r,t\n1,10,5,100\n2,20,4,200\n", None, True),
        ("1\t10\t5\t100\n2\t20\t4\t200\n", None, False),
        ("1;10;5;100\n2;20;4;200\n", None, False),
        ("1|10|5|100\n2|20|4|200\n", None, False),
        ("1::10::5::100\n2::20::4::200\n", None, False),
        ("1  10 5   100\n2 20\t4 200\n", None, False),
        ("userId::movieId::rating::timestamp\n1::10::5::100\n2::20::4::200\n", None, True),
        ('"1","10","5","100"\r\n"2","20","4","200"\r\n', None, False),
        ("1 10 5 100\n2 20 4 200\n", "whitespace", False),
        ("1,10,5,100\n2,20,4,200\n", ",", False),
        ("1,10,5,100\n2,20,4,200\n", ",", None),
        ("x,y,z,w\n1,10,5,100\n2,20,4,200\n", ",", True),
    ],
)
def test_load_csv_detects_delimiter_and_header(
    tmp_path: Path, text: str, delimiter: str | None, header: bool | None
) -> None:
    data = load_csv(write(tmp_path, "r.csv", text), delimiter=delimiter, header=header)
    assert_golden(
        data, user=[0, 1], item=[0, 1], timestamp=[100, 200], raw_users=[1, 2], raw_items=[10, 20]
    )


@pytest.mark.parametrize(
    ("text", "expect_header"),
    [
        ("user,item\nu1,i1\n", True),  # known column names
        ("customer,product\nu1,i1\n", True),
        ("a,b\n1,2\n3,4\n", True),  # non-integer first row above integer ids
        ("a,b,score_x\nu1,i1,5\n", True),  # non-numeric in the rating position
        ("user_1,item_1\nuser_2,item_2\n", False),  # string ids, not a header
        ("1,2\n3,4\n", False),
    ],
)
def test_header_detection(tmp_path: Path, text: str, expect_header: bool) -> None:
    data = load_csv(write(tmp_path, "h.csv", text))
    assert len(data) == text.count("\n") - int(expect_header)


def test_load_csv_mixed_ids_and_quoted_delimiters(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", 'user,item,rating\n7,"Smith, J",1\n10,"Abc",2\n7,Abc,3\n')
    data = load_csv(path)
    assert data.raw_user_ids.tolist() == [7, 10]  # integer users even though items are strings
    assert data.raw_item_ids.tolist() == ["Abc", "Smith, J"]
    assert data.item.tolist() == [0, 1, 0]


def test_load_csv_float_timestamps_are_floored(tmp_path: Path) -> None:
    data = load_csv(write(tmp_path, "f.csv", "1,2,5,10.7\n1,3,5,11.2\n"))
    assert data.timestamp.tolist() == [10, 11]


def test_load_csv_surprises_after_the_sample_fall_back_correctly(tmp_path: Path) -> None:
    rows = "".join(f"{k},{k + 1},5,{k}\n" for k in range(100))
    late_float = load_csv(write(tmp_path, "a.csv", rows + "7,8,5,1000.9\n"))
    assert late_float.timestamp.max() == 1000
    late_string = load_csv(write(tmp_path, "b.csv", rows + "zed,8,5,3\n"))
    assert late_string.raw_user_ids.dtype.kind == "U" and late_string.num_users == 101
    assert late_string.raw_user_ids[-1] == "zed" and "10" in late_string.raw_user_ids.tolist()


def test_load_csv_directory_with_one_file(tmp_path: Path) -> None:
    write(tmp_path, "only.tsv", "1\t2\n")
    (tmp_path / "notes.txt").write_text("ignored")
    assert len(load_csv(tmp_path)) == 1
    write(tmp_path, "second.csv", "1,2\n")
    with pytest.raises(ValueError, match="several"):
        load_csv(tmp_path)


def test_whitespace_only_lines_bom_and_crlf_are_tolerated(tmp_path: Path) -> None:
    # Whitespace-only lines make the fast C reader fail; the slow path must still accept them.
    body = "3\t100\t4\t300\r\n   \r\n1\t20\t5\t100\r\n1\t10\t3\t200\r\n2\t5\t1\t50\r\n"
    body += "1\t20\t2\t150\r\n\t\r\n3\t7\t5\t300\r\n\r\n"
    path = tmp_path / "u.data"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert_golden(load_ml100k(path), **ML100K_GOLDEN)


# --------------------------------------------------------------------------- from_arrays


def test_from_arrays_remaps_sorts_and_dedupes() -> None:
    data = from_arrays([30, 10, 30, 30], [5, 5, 6, 5], [7, 1, 3, 9])
    assert_golden(
        data,
        user=[0, 1, 1],
        item=[0, 1, 0],
        timestamp=[1, 3, 9],
        raw_users=[10, 30],
        raw_items=[5, 6],
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


# --------------------------------------------------------------------------- malformed input


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


@pytest.mark.parametrize("alias", ["tab", "\\t", "\t"])
def test_delimiter_aliases(tmp_path: Path, alias: str) -> None:
    assert len(load_csv(write(tmp_path, "a.tsv", "1\t2\n3\t4\n"), delimiter=alias)) == 2


def test_error_snippet_is_truncated(tmp_path: Path) -> None:
    path = write(tmp_path, "u.data", "1\t2\t3\t4\n" + "9" * 500 + "\n")
    with pytest.raises(DataFormatError) as info:
        load_ml100k(path)
    assert len(str(info.value)) < 400
    assert "..." in str(info.value)


def test_bad_line_deep_in_large_file_is_found(tmp_path: Path) -> None:
    good = "".join(f"{u}::{u % 97}::3::{1000 + u}\n" for u in range(20_000))
    path = write(tmp_path, "ratings.dat", good + "5::6::3\n" + good)
    with pytest.raises(DataFormatError, match="line 20001:"):
        load_ml_dat(path)
    assert len(load_ml_dat(write(tmp_path, "ok.dat", good))) == 20_000


# --------------------------------------------------------------------------- load_dataset


def test_load_dataset_dispatch() -> None:
    assert DATASETS == ("synthetic", "ml-100k", "ml-1m", "movielens-csv", "csv")
    assert_golden(load_dataset("ml-100k", str(FIXTURES / "ml100k")), **ML100K_GOLDEN)
    assert len(load_dataset("ml-1m", str(FIXTURES / "ml1m"))) == 4
    assert len(load_dataset("movielens-csv", str(FIXTURES / "mlcsv"))) == 3
    assert len(load_dataset("csv", str(FIXTURES / "generic.tsv"))) == 3
    syn = load_dataset("synthetic", seed=3, synthetic_users=40, synthetic_items=200)
    ref = synthetic(40, 200, 3)
    assert syn.num_users == 40 and syn.num_items == 200
    assert np.array_equal(syn.item, ref.item) and np.array_equal(syn.timestamp, ref.timestamp)


def test_load_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        load_dataset("movielens")
    for name in DATASETS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="data-dir"):
        load_dataset("ml-100k")
    with pytest.raises(FileNotFoundError) as missing:
        load_dataset("ml-100k", str(tmp_path))
    assert str(tmp_path / "u.data") in str(missing.value)
    with pytest.raises(FileNotFoundError, match="ratings.dat"):
        load_dataset("ml-1m", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"\.csv or \.tsv"):
        load_dataset("csv", str(tmp_path))


# --------------------------------------------------------------------------- synthetic


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
    with pytest.raises(ValueError, match="MIN_PER_USER=10: set synthetic-items to at least 11"):
        synthetic(10, 10, 0)  # cap 9 < MIN_PER_USER
    # The shape is fixed, not an option: every user has one to hold out and one to train on.
    assert generator.MIN_PER_USER >= 2 and generator.MAX_PER_USER >= generator.MIN_PER_USER


def test_synthetic_scales() -> None:
    data = synthetic(2000, 3000, 5)
    assert data.num_users == 2000 and np.bincount(data.user).min() >= 10


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not (ML100K_REAL / "u.data").is_file(), reason="MovieLens-100K not present")
def test_real_ml100k() -> None:
    data = load_ml100k(ML100K_REAL)
    assert (data.num_users, data.num_items, len(data)) == (943, 1682, 100_000)
    assert data.raw_user_ids.tolist() == list(range(1, 944))
    assert data.raw_item_ids.tolist() == list(range(1, 1683))
    assert np.all(np.diff(data.user) >= 0)
    assert np.bincount(data.user).min() >= 20
