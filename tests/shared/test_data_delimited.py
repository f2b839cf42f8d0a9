"""Tests for shared.data.delimited: any delimited file, delimiter and header detection."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.data import (
    load_csv,
)
from tests.shared.data_golden import assert_golden, write


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


@pytest.mark.parametrize("alias", ["tab", "\\t", "\t"])
def test_delimiter_aliases(tmp_path: Path, alias: str) -> None:
    assert len(load_csv(write(tmp_path, "a.tsv", "1\t2\n3\t4\n"), delimiter=alias)) == 2
