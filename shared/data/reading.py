"""Reading rows out of a ratings file, shared by every file loader.

Parsing has two paths: a vectorised one (``np.loadtxt``'s C reader) that each loader tries first,
and the line-by-line reference parser here (:func:`parse_rows`) used only when the fast one fails,
either to report the first bad line as a :class:`DataFormatError` (file, 1-based line, what was
found, what was expected) or to accept inputs the fast reader is stricter about (e.g.
whitespace-only lines). A new per-row option (a counts column, a minimum rating) belongs in
:class:`Columns` and :func:`parse_rows`, where every loader's rows pass.
"""

from __future__ import annotations

import csv
import math
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.data.interactions import Interactions, from_arrays

PathLike = str | os.PathLike[str]

INT_RE = re.compile(r"[+-]?\d+\Z")
BOM = "\ufeff"
_SNIPPET_LEN = 80


class DataFormatError(ValueError):
    """Raised for malformed input; message names the file, the 1-based line number, what was
    found and what was expected."""

    def __init__(
        self, path: PathLike, line_number: int, problem: str, found: str, expected: str
    ) -> None:
        self.path = str(path)
        self.line_number = line_number
        self.problem = problem
        self.found = found
        self.expected = expected
        super().__init__(
            f"{self.path}, line {line_number}: {problem}; found {_snippet(found)}; "
            f"expected {expected}"
        )

    def __reduce__(self) -> tuple[type, tuple[str, int, str, str, str]]:
        # Keep the error picklable (it may cross process boundaries in simulations).
        args = (self.path, self.line_number, self.problem, self.found, self.expected)
        return (type(self), args)


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _snippet(text: str) -> str:
    text = text.rstrip("\r\n")
    if len(text) > _SNIPPET_LEN:
        text = text[: _SNIPPET_LEN - 3] + "..."
    return repr(text)


def resolve(path: PathLike, filename: str, description: str) -> Path:
    """`path` may be the data file itself or the directory holding `filename`."""
    p = Path(path).expanduser()
    if p.is_dir():
        f = p / filename
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: expected the {description} '{filename}' here")
        return f
    if not p.is_file():
        raise FileNotFoundError(
            f"{p} not found: expected the {description} '{filename}' or a directory containing it"
        )
    return p


TEXT_FILE = "a text file: UTF-8 (or Latin-1), or UTF-16 with a byte-order mark"


def read_text(path: Path) -> str:
    """The file's text: UTF-8 (a BOM is dropped), UTF-16 with a BOM (spreadsheets' "Unicode
    text"), else Latin-1. A NUL byte is refused: text files have none, so the file is binary,
    damaged or UTF-16 without a BOM; NumPy's strings would also drop trailing NULs from ids."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise DataFormatError(
                path, 1, "not valid UTF-16 after a UTF-16 byte-order mark", "", TEXT_FILE
            ) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # never fails; ids stay byte-faithful
    nul = text.find("\0")
    if nul >= 0:
        line_start = text.rfind("\n", 0, nul) + 1
        line_end = text.find("\n", nul)
        raise DataFormatError(
            path,
            text.count("\n", 0, nul) + 1,
            "NUL byte (the file is binary, damaged, or UTF-16 without a byte-order mark)",
            text[line_start : line_end if line_end >= 0 else len(text)],
            TEXT_FILE,
        )
    return text


def split_lines(text: str) -> list[str]:
    # Split on '\n' only: str.splitlines() also breaks on \x0b, \x1c, \x85, ... which would
    # shift line numbers relative to what editors show.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    # A BOM at the start of a later line (files concatenated with `cat`) is not part of an id:
    # kept, it would turn that column's integer ids into strings.
    return [(ln[:-1] if ln.endswith("\r") else ln).lstrip(BOM) for ln in lines]


def fast_loadtxt(source: object, **kwargs: object) -> np.ndarray | None:
    """np.loadtxt or None when it rejects the input (the slow path then explains why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # empty-input warning; emptiness is reported later
            arr = np.loadtxt(source, comments=None, ndmin=1, **kwargs)  # type: ignore[call-overload]
    except (ValueError, UnicodeDecodeError, OverflowError):
        return None
    return arr if arr.size else None


NUMERIC_DTYPE = np.dtype([("u", "<i8"), ("i", "<i8"), ("r", "<f8"), ("t", "<i8")])

Row = tuple[int, str, list[str]]  # (1-based line number, raw line, fields)


def split_rows(lines: Sequence[str], delimiter: str | None, start: int = 0) -> Iterator[Row]:
    """Yield non-blank rows as split fields (plain split, no quoting)."""
    for idx in range(start, len(lines)):
        line = lines[idx]
        if not line.strip():
            continue
        fields = line.split() if delimiter is None else line.split(delimiter)
        yield idx + 1, line, fields


def csv_rows(lines: Sequence[str], delimiter: str, start: int = 0) -> Iterator[Row]:
    """Yield non-blank rows split with the csv module (handles "quoted, fields")."""
    for idx in range(start, len(lines)):
        line = lines[idx]
        if not line.strip():
            continue
        # csv.reader costs ~10x a plain split; only quoted lines need it.
        if '"' in line:
            yield idx + 1, line, next(csv.reader([line], delimiter=delimiter))
        else:
            yield idx + 1, line, line.split(delimiter)


@dataclass(frozen=True)
class Columns:
    ncols: int  # fields every row must have
    user: int
    item: int
    rating: int | None
    timestamp: int | None


def parse_rows(
    path: Path,
    rows: Iterable[Row],
    cols: Columns,
    *,
    integer_ids: bool,
    integer_ts: bool,
    expected: str,
    delimiter_name: str,
    end_line: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Line-by-line reference parser: returns raw (users, items, timestamps, ratings) or raises
    at the first bad line; timestamps / ratings are None where ``cols`` has no such column."""
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    ratings: list[float] = []

    def fail(line_no: int, line: str, problem: str) -> DataFormatError:
        return DataFormatError(path, line_no, problem, line, expected)

    for line_no, line, fields in rows:
        if len(fields) != cols.ncols:
            raise fail(
                line_no,
                line,
                f"expected {cols.ncols} fields separated by {delimiter_name}, got {len(fields)}",
            )
        for col, name in ((cols.user, "user"), (cols.item, "item")):
            value = fields[col].strip()
            if not value:
                raise fail(line_no, line, f"{name} id is empty")
            if integer_ids and not INT_RE.match(value):
                raise fail(line_no, line, f"{name} id {value!r} is not an integer")
        if cols.rating is not None:
            value = fields[cols.rating].strip()
            if not is_number(value):
                raise fail(line_no, line, f"rating {value!r} is not a number")
            ratings.append(float(value))
        ts = 0
        if cols.timestamp is not None:
            value = fields[cols.timestamp].strip()
            ts_or_none = parse_timestamp(value, integer_only=integer_ts)
            if ts_or_none is None:
                what = "an integer" if integer_ts else "a number"
                raise fail(line_no, line, f"timestamp {value!r} is not {what} in int64 range")
            ts = ts_or_none
        users.append(fields[cols.user].strip())
        items.append(fields[cols.item].strip())
        times.append(ts)
    if not users:
        raise fail(end_line, "", "no data rows (file is empty or has only a header)")
    ts_arr = None if cols.timestamp is None else np.asarray(times, dtype=np.int64)
    rating_arr = None if cols.rating is None else np.asarray(ratings, dtype=np.float64)
    return ids_from_strings(users), ids_from_strings(items), ts_arr, rating_arr


def parse_timestamp(value: str, *, integer_only: bool) -> int | None:
    """Timestamp as int (fractions floored), or None if it is not a representable number."""
    try:
        ts = int(value) if INT_RE.match(value) else None
        if ts is None and not integer_only:
            ts = math.floor(float(value))
    except (ValueError, OverflowError):  # nan / inf
        return None
    if ts is None or not -(2**63) <= ts < 2**63:
        return None
    return ts


def ids_from_strings(values: list[str]) -> np.ndarray:
    """int64 if every id is an integer literal, else the strings themselves."""
    if all(INT_RE.match(v) for v in values):
        try:
            return np.array([int(v) for v in values], dtype=np.int64)
        except OverflowError:
            pass
    return np.array(values, dtype=str)


def from_struct(arr: np.ndarray) -> Interactions:
    return from_arrays(arr["u"], arr["i"], arr["t"], arr["r"])


def first_content_line(lines: Sequence[str]) -> int | None:
    return next((k for k, ln in enumerate(lines) if ln.strip()), None)
