"""Golden values of every loader on small files: ids remapped, sorted, deduplicated.

One file for all of them: each test states the exact arrays a loader must return.
"""

from pathlib import Path

from shared.data import from_arrays, load_csv, load_ml_dat, load_movielens_csv
from tests.shared.data_golden import FIXTURES, assert_golden, write


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


def test_count_column_and_missing_timestamps_are_kept() -> None:
    data = load_csv(FIXTURES / "plays.tsv")
    assert not data.has_timestamps and data.timestamp.tolist() == [0] * len(data)
    assert data.rating is not None and data.rating.dtype.name == "float64"
    first = data.user == 0  # u01: 102 -> 50 plays, 106 -> 54, 108 -> 8, ...
    assert data.raw_user_ids[0] == "u01"
    assert data.raw_item_ids[data.item[first][:3]].tolist() == [102, 106, 108]
    assert data.rating[first][:3].tolist() == [50.0, 54.0, 8.0]


def test_ratings_and_timestamps_facts_per_loader(tmp_path: Path) -> None:
    # duplicates keep the latest timestamp and the largest rating, whatever the row order
    data = from_arrays([1, 1, 1], [7, 7, 8], [5, 3, 4], ratings=[2, 4, 1])
    assert data.has_timestamps and data.rating.tolist() == [1.0, 4.0]
    assert load_ml_dat(FIXTURES / "ml1m").has_timestamps
    assert from_arrays([1], [2]).rating is None and not from_arrays([1], [2]).has_timestamps
    # the slow (line-by-line) path keeps them too: a quoted string id sends it there
    slow = load_csv(write(tmp_path, "q.csv", '"a,1",x,3\nb,y,2.5\n'))
    assert slow.rating.tolist() == [3.0, 2.5] and not slow.has_timestamps
    two = load_csv(write(tmp_path, "two.csv", "1,2\n1,3\n"))
    assert two.rating is None and not two.has_timestamps
