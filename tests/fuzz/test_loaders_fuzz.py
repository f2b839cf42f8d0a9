"""The file loaders, fuzzed: any file either loads what was written or fails with a clear error.

Two properties over every loader (``shared/data/``): valid interactions written in any format the
loaders read (delimiter, header, line ending, a BOM, blank lines) load back as exactly those
interactions; and any damage to such a file (truncation, a wrong delimiter, non-numeric or huge
ids, NUL and non-UTF-8 bytes, mixed line endings) ends in what the CLI reports as one line
(:class:`DataFormatError`, :class:`DataError`, :class:`FileNotFoundError`) or in a load whose
result is a consistent :class:`Interactions`, never in a raw IndexError/ValueError/traceback.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from shared.data import (
    DataError,
    DataFormatError,
    filter_interactions,
    load_csv,
    load_dataset,
    load_ml100k,
    load_ml_dat,
    load_movielens_csv,
)
from shared.data.interactions import Interactions
from shared.data.reading import INT_RE, is_number
from shared.split import leave_one_out

# What the CLI prints as a one-line "data error" / "file not found" (simulations/cli.py).
CLEAR = (DataFormatError, DataError, FileNotFoundError)
INT64 = st.integers(-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Row:
    user: int | str
    item: int | str
    rating: float
    timestamp: int


def _rows(ids: st.SearchStrategy) -> st.SearchStrategy[list[Row]]:
    ratings = st.one_of(
        st.integers(0, 10**6).map(float),
        st.floats(-1e300, 1e300, allow_nan=False, allow_infinity=False),
    )
    return st.lists(st.builds(Row, ids, ids, ratings, INT64), min_size=1, max_size=30)


INT_IDS = st.one_of(st.integers(0, 50), INT64)
# never a number, never a delimiter, a quote or whitespace: a string id the sniffer cannot misread
STR_IDS = st.text("abcxyzAZ_-.09", min_size=1, max_size=6).map(lambda s: "u" + s)


def expected(rows: list[Row], *, rating: bool, timestamp: bool) -> dict:
    """(raw user, raw item) -> (latest timestamp, largest rating): what a load must give.

    A column's ids are integers only when every id in it is one; else all are strings.
    """
    as_str = [any(isinstance(getattr(r, c), str) for r in rows) for c in ("user", "item")]
    user_str, item_str = as_str
    rows = [
        Row(
            str(r.user) if user_str else r.user,
            str(r.item) if item_str else r.item,
            r.rating,
            r.timestamp,
        )
        for r in rows
    ]
    out: dict = {}
    for r in rows:
        ts = r.timestamp if timestamp else 0
        rt = r.rating if rating else None
        old = out.get((r.user, r.item))
        if old is not None:
            ts = max(ts, old[0])
            rt = None if rt is None else max(rt, old[1])
        out[(r.user, r.item)] = (ts, rt)
    return out


def loaded(data: Interactions) -> dict:
    assert_consistent(data)
    return {
        (_raw(data.raw_user_ids[u]), _raw(data.raw_item_ids[i])): (
            int(t),
            None if data.rating is None else float(data.rating[k]),
        )
        for k, (u, i, t) in enumerate(zip(data.user, data.item, data.timestamp, strict=True))
    }


def _raw(value: object) -> int | str:
    return int(value) if isinstance(value, np.integer) else str(value)


def assert_consistent(data: Interactions) -> None:
    """What every later step relies on: dense ids in range, one row per pair, sorted rows."""
    n = len(data)
    assert data.user.shape == data.item.shape == data.timestamp.shape == (n,)
    assert data.user.dtype == data.item.dtype == data.timestamp.dtype == np.int64
    assert data.num_users == len(data.raw_user_ids) and data.num_items == len(data.raw_item_ids)
    if n:
        assert 0 <= data.user.min() and data.user.max() < data.num_users
        assert 0 <= data.item.min() and data.item.max() < data.num_items
        assert len(set(zip(data.user.tolist(), data.item.tolist(), strict=True))) == n
        order = np.lexsort((data.item, data.timestamp, data.user))
        assert (order == np.arange(n)).all()
    if data.rating is not None:
        assert data.rating.shape == (n,)


def _write(tmp: Path, name: str, lines: list[str], ending: str, bom: bool | str) -> Path:
    """``bom``: False (plain UTF-8), True or "utf-8-sig" (UTF-8 with a BOM), "utf-16"."""
    path = tmp / name
    text = "".join(line + ending for line in lines)
    encoding = {False: "utf-8", True: "utf-8-sig"}.get(bom, bom)
    path.write_bytes(text.encode(encoding))
    return path


ENCODINGS = st.sampled_from([False, "utf-8-sig", "utf-16"])


ENDINGS = st.sampled_from(["\n", "\r\n"])
CSV_DELIMITERS = st.sampled_from([",", "\t", ";", "|", " ", "::"])


@given(
    rows=_rows(INT_IDS),
    fmt=st.sampled_from(["ml-100k", "ml-1m", "movielens-csv"]),
    ending=ENDINGS,
    bom=ENCODINGS,
    blank=st.booleans(),
)
def test_movielens_round_trip(rows, fmt, ending, bom, blank):
    if fmt == "movielens-csv" and bom == "utf-16":
        bom = "utf-8-sig"  # MovieLens ships UTF-8; its header is read without the file
    rows = [Row(abs(r.user) % 2**62, abs(r.item) % 2**62, r.rating, r.timestamp) for r in rows]
    sep = {"ml-100k": "\t", "ml-1m": "::", "movielens-csv": ","}[fmt]
    body = [sep.join(map(repr, (r.user, r.item, r.rating, r.timestamp))) for r in rows]
    if blank:
        body.insert(len(body) // 2, "")
    header = ["userId,movieId,rating,timestamp"] if fmt == "movielens-csv" else []
    name = {"ml-100k": "u.data", "ml-1m": "ratings.dat", "movielens-csv": "ratings.csv"}[fmt]
    loader = {"ml-100k": load_ml100k, "ml-1m": load_ml_dat, "movielens-csv": load_movielens_csv}
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), name, header + body, ending, bom)
        data = loader[fmt](path)
    assert loaded(data) == expected(rows, rating=True, timestamp=True)
    assert data.has_timestamps


@given(
    rows=_rows(st.one_of(INT_IDS, STR_IDS)),
    ncols=st.integers(2, 4),
    delimiter=CSV_DELIMITERS,
    header=st.booleans(),
    say_layout=st.booleans(),
    ending=ENDINGS,
    bom=ENCODINGS,
)
def test_csv_round_trip(rows, ncols, delimiter, header, say_layout, ending, bom):
    names = ["user", "item", "rating", "timestamp"][:ncols]
    fields = [[r.user, r.item, r.rating, r.timestamp][:ncols] for r in rows]
    body = [delimiter.join(map(_text, f)) for f in fields]
    lines = ([delimiter.join(names)] if header else []) + body
    # Detection guesses (docs/design.md §5): a first row of string ids without a header, or one
    # delimiter among others, is what csv-delimiter and csv-header are for; say them then.
    strings = any(isinstance(f, str) for r in rows for f in (r.user, r.item))
    tell = say_layout or (strings and not header)
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), "data.csv", lines, ending, bom)
        data = load_csv(
            path,
            delimiter=(delimiter if delimiter != " " else "whitespace") if tell else None,
            header=header if tell else None,
        )
    assert loaded(data) == expected(rows, rating=ncols >= 3, timestamp=ncols == 4)
    assert data.has_timestamps == (ncols == 4)


def _text(value: object) -> str:
    return repr(value) if isinstance(value, float) else str(value)


# -- damaged files ---------------------------------------------------------------------------

DAMAGE = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=8)),
    st.tuples(
        st.just("insert"),
        st.floats(0, 1),
        st.sampled_from(
            [
                b"\x00",
                b"\xff\xfe",
                b"\xef\xbb\xbf",
                b"\r",
                b"\r\n",
                b"\n",
                b",",
                b"\t",
                b"::",
                b";",
                b" ",
                b'"',
                b"nan",
                b"inf",
                b"-",
                b"1e999",
                b"99999999999999999999999",
                b"x",
            ]
        ),
    ),
    st.tuples(
        st.just("replace"),
        st.sampled_from([b"\t", b",", b"::", b"\n"]),
        st.sampled_from([b";", b" ", b"|", b",", b"\t", b"", b"\r", b"\x00"]),
    ),
)


def _damage(data: bytes, damages: list[tuple]) -> bytes:
    for damage in damages:
        kind = damage[0]
        if kind == "truncate":
            data = data[: int(damage[1] * len(data))]
        elif kind == "insert":
            at = int(damage[1] * len(data))
            data = data[:at] + damage[2] + data[at:]
        else:
            data = data.replace(damage[1], damage[2], 1)
    return data


DATASET_FILES = {
    "ml-100k": ("u.data", "\t", False),
    "ml-1m": ("ratings.dat", "::", False),
    "movielens-csv": ("ratings.csv", ",", True),
    "csv": ("data.csv", ",", True),
}


@given(
    rows=_rows(INT_IDS),
    dataset=st.sampled_from(sorted(DATASET_FILES)),
    damages=st.lists(DAMAGE, min_size=1, max_size=4),
    ending=ENDINGS,
    bom=st.booleans(),
    delimiter=st.sampled_from(["auto", ",", ";", "tab", "whitespace", "::", "|"]),
    csv_header=st.sampled_from(["auto", "yes", "no"]),
)
@example(  # a NUL byte inside a row: np.loadtxt read it as the end of the field
    rows=[Row(1, 2, 3.0, 4)],
    dataset="ml-100k",
    damages=[("insert", 0.1, b"\x00")],
    ending="\n",
    bom=False,
    delimiter="auto",
    csv_header="auto",
)
def test_damaged_files_fail_clearly(rows, dataset, damages, ending, bom, delimiter, csv_header):
    name, sep, header = DATASET_FILES[dataset]
    lines = [sep.join(map(repr, (r.user, r.item, r.rating, r.timestamp))) for r in rows]
    if header:
        lines.insert(0, sep.join(["userId", "movieId", "rating", "timestamp"]))
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), name, lines, ending, bom)
        path.write_bytes(_damage(path.read_bytes(), damages))
        options = {"csv_delimiter": delimiter, "csv_header": csv_header} if dataset == "csv" else {}
        try:
            data = load_dataset(dataset, str(path), **options)
        except CLEAR as err:
            assert _one_line(err)
            return
    assert_consistent(data)
    # what the run does next with it: the filters, then the split; both fail clearly or work
    try:
        kept, _ = filter_interactions(data, min_rating=0, min_user=2, min_item=1)
        leave_one_out(kept, num_eval_negatives=min(2, kept.num_items - 2))
    except CLEAR as err:
        assert _one_line(err)


def _one_line(err: BaseException) -> bool:
    message = " ".join(str(err).split())
    return bool(message) and len(message) < 600


@given(content=st.binary(max_size=200), dataset=st.sampled_from(sorted(DATASET_FILES)))
@example(content=b"", dataset="csv")
@example(content=b"\xef\xbb\xbf", dataset="movielens-csv")
@example(content=b"\x00\x00\x00", dataset="ml-100k")
@example(content=b"1\t2\t3\t4\x00", dataset="ml-100k")
@example(content=b"1,2\n", dataset="csv")
def test_arbitrary_bytes_fail_clearly(content, dataset):
    name, _, _ = DATASET_FILES[dataset]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(content)
        try:
            data = load_dataset(dataset, str(path))
        except CLEAR as err:
            assert _one_line(err)
            return
    assert_consistent(data)
    assert len(data) <= content.count(b"\n") + 1
    assert all(math.isfinite(x) or math.isnan(x) or True for x in (data.rating or []))


@given(
    rows=st.lists(st.tuples(*[st.integers(0, 30)] * 4), min_size=1, max_size=8),
    ncols=st.integers(2, 4),
    at=st.tuples(st.integers(0, 7), st.integers(0, 3)),
    value=st.text("ab1.e-_ \x00\ufeff+n", max_size=5),
)
@example(rows=[(1, 2, 3, 4), (5, 6, 7, 8)], ncols=3, at=(0, 2), value="abc")  # was: a header
@example(rows=[(1, 2, 3, 4), (5, 6, 7, 8)], ncols=2, at=(0, 1), value="2\x00")  # was: a header
def test_one_damaged_field_is_loaded_or_named(rows, ncols, at, value):
    """A valid headerless file with one field replaced: the row is loaded as written (a string
    id) or the load fails naming it; the sniffer must never take it for a header and drop it."""
    table = [[str(v) for v in r[:ncols]] for r in rows]
    row, col = at[0] % len(table), at[1] % ncols
    table[row][col] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), "d.csv", [",".join(r) for r in table], "\n", False)
        try:
            data = load_csv(path)
        except CLEAR as err:
            assert _one_line(err)
            return
    # a BOM that starts a line is dropped (a concatenated file's); other whitespace is trimmed
    table = [[r[0].lstrip("\ufeff"), *r[1:]] for r in table]
    field = table[row][col].strip()
    assert field, "an empty id or number was accepted"
    if col >= 2:
        assert is_number(field), f"a non-numeric rating or timestamp {field!r} was accepted"
    got = {
        (_canon(data.raw_user_ids[u]), _canon(data.raw_item_ids[i]))
        for u, i in zip(data.user, data.item, strict=True)
    }
    assert got == {(_canon(r[0].strip()), _canon(r[1].strip())) for r in table}


def _canon(value: object) -> str:
    text = str(value)
    return str(int(text)) if INT_RE.match(text) else text


def test_a_bom_inside_the_file_is_not_part_of_an_id(tmp_path):
    # found by the fuzzer: `cat a.csv b.csv` with a BOM on b turned every user id into a string
    path = tmp_path / "cat.csv"
    path.write_bytes(b"\xef\xbb\xbf1,2,3,4\n\xef\xbb\xbf5,6,7,8\n")
    data = load_csv(path)
    assert data.raw_user_ids.tolist() == [1, 5] and data.raw_user_ids.dtype == np.int64


@given(delimiter=st.text(min_size=1, max_size=3))
@example(delimiter='"')  # was: TypeError from the csv module
@example(delimiter="\r")  # was: TypeError from the csv module
def test_any_delimiter_loads_or_is_refused_clearly(tmp_path_factory, delimiter):
    path = tmp_path_factory.mktemp("delim") / "x.csv"
    path.write_text('1,2,3,4\n5,6,7,8\n"9",10,11,12\n')
    try:
        data = load_csv(path, delimiter=delimiter)
    except CLEAR:
        return
    except ValueError as err:  # the config refuses these first (ConfigError naming the key)
        assert "csv-delimiter" in str(err)
        return
    assert_consistent(data)
