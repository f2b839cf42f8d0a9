"""Interaction data for Confide: MovieLens / generic CSV loaders and a synthetic generator.

Everything is implicit feedback: each (user, item) row is a positive, whatever its rating.
Raw ids are remapped to dense ids ``0..n-1`` in sorted order of the raw ids, duplicate
(user, item) pairs keep their latest timestamp, and rows are sorted by (user, timestamp, item)
so the same input always yields the same arrays.

Parsing uses a vectorised fast path (``np.loadtxt``'s C reader); only when that fails is the file
re-scanned line by line, either to report the first bad line as a :class:`DataFormatError` or to
accept inputs the fast reader is stricter about (e.g. whitespace-only lines).
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DATASETS",
    "DataFormatError",
    "Interactions",
    "from_arrays",
    "load_csv",
    "load_dataset",
    "load_ml100k",
    "load_ml_dat",
    "load_movielens_csv",
    "synthetic",
]

PathLike = str | os.PathLike[str]

DATASETS = ("synthetic", "ml-100k", "ml-1m", "movielens-csv", "csv")

_INT_RE = re.compile(r"[+-]?\d+\Z")
_SNIPPET_LEN = 80

ML100K_FORMAT = "4 tab-separated fields: user_id<TAB>item_id<TAB>rating<TAB>timestamp (integers)"
ML_DAT_FORMAT = "4 '::'-separated fields: UserID::MovieID::Rating::Timestamp (integers)"
ML_CSV_FORMAT = "4 comma-separated fields under the header userId,movieId,rating,timestamp"
CSV_FORMAT = "user,item[,rating][,timestamp] (rating and timestamp numeric)"


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


def _is_number(text: str) -> bool:
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


@dataclass(frozen=True)
class Interactions:
    """Implicit-feedback interactions with dense ids (every rating is a positive)."""

    user: np.ndarray  # int64, dense ids 0..num_users-1
    item: np.ndarray  # int64, dense ids 0..num_items-1
    timestamp: np.ndarray  # int64; 0 where the source has no timestamp
    num_users: int
    num_items: int
    raw_user_ids: np.ndarray  # dense id -> original id (int64 if all ids are integers, else str)
    raw_item_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.user.shape[0])


# --------------------------------------------------------------------------- id handling


def _as_id_array(values: Iterable[object] | np.ndarray, what: str) -> np.ndarray:
    """Normalise raw ids to a 1-D int64 array (integer ids) or a str array (anything else)."""
    arr = np.asarray(values if isinstance(values, np.ndarray) else list(values))
    arr = arr.reshape(-1)
    kind = arr.dtype.kind
    if kind in "iub":
        if kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
            return arr.astype(str)
        return arr.astype(np.int64)
    if kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.floor(arr)):
            raise ValueError(f"{what} ids are floats that are not all integral")
        return arr.astype(np.int64)
    if kind == "S":
        return arr.astype(str)
    if kind == "O":
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in arr):
            try:
                return arr.astype(np.int64)
            except OverflowError:
                pass
        return arr.astype(str)
    if kind == "U":
        return arr
    raise ValueError(f"unsupported dtype {arr.dtype} for {what} ids")


def _remap(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (dense ids, sorted unique raw ids); numeric order for ints, lexicographic for str."""
    if raw.size == 0:
        return np.zeros(0, np.int64), raw[:0].copy()
    if raw.dtype == np.int64:
        lo, hi = int(raw.min()), int(raw.max())
        # Bitmap lookup is O(n) and much faster than np.unique's sort when ids are compact.
        if lo >= 0 and hi <= 4 * raw.size + (1 << 20):
            present = np.zeros(hi + 1, dtype=bool)
            present[raw] = True
            uniques = np.flatnonzero(present).astype(np.int64)
            lut = np.empty(hi + 1, dtype=np.int64)
            lut[uniques] = np.arange(uniques.size, dtype=np.int64)
            return lut[raw], uniques
    uniques, inverse = np.unique(raw, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64), uniques


def _build(
    user: np.ndarray,
    item: np.ndarray,
    timestamp: np.ndarray,
    raw_user_ids: np.ndarray,
    raw_item_ids: np.ndarray,
) -> Interactions:
    """Merge duplicate (user, item) pairs (latest timestamp wins) and sort by (user, ts, item)."""
    num_users, num_items = int(raw_user_ids.size), int(raw_item_ids.size)
    if user.size:
        key = user * num_items + item
        order = np.argsort(key)
        key_sorted = key[order]
        starts = np.flatnonzero(np.r_[True, key_sorted[1:] != key_sorted[:-1]])
        user, item, ts_sorted = user[order], item[order], timestamp[order]
        if starts.size != key.size:
            timestamp = np.maximum.reduceat(ts_sorted, starts)
            user, item = user[starts], item[starts]
        else:
            timestamp = ts_sorted
        # Rows are now in (user, item) order, so a *stable* sort on (user, timestamp) yields
        # (user, timestamp, item) order; one int64 key is much faster than np.lexsort.
        t_min = int(timestamp.min())
        t_span = int(timestamp.max()) - t_min + 1
        if num_users * t_span < 2**62:
            order = np.argsort(user * t_span + (timestamp - t_min), kind="stable")
        else:
            order = np.lexsort((item, timestamp, user))
        user, item, timestamp = user[order], item[order], timestamp[order]
    return Interactions(
        user=np.ascontiguousarray(user, dtype=np.int64),
        item=np.ascontiguousarray(item, dtype=np.int64),
        timestamp=np.ascontiguousarray(timestamp, dtype=np.int64),
        num_users=num_users,
        num_items=num_items,
        raw_user_ids=raw_user_ids,
        raw_item_ids=raw_item_ids,
    )


def from_arrays(
    users: Sequence[object] | np.ndarray,
    items: Sequence[object] | np.ndarray,
    timestamps: Sequence[float] | np.ndarray | None = None,
) -> Interactions:
    """Build :class:`Interactions` from raw ids (ints or strings), remapping them to dense ids.

    Integer ids (or integral floats) keep numeric order; anything else is treated as strings and
    ordered lexicographically. Missing timestamps become 0.
    """
    raw_u = _as_id_array(users, "user")
    raw_i = _as_id_array(items, "item")
    if raw_u.size != raw_i.size:
        raise ValueError(f"users and items differ in length: {raw_u.size} != {raw_i.size}")
    if timestamps is None:
        ts = np.zeros(raw_u.size, dtype=np.int64)
    else:
        ts_arr = np.asarray(timestamps).reshape(-1)
        if ts_arr.size != raw_u.size:
            raise ValueError(f"timestamps length {ts_arr.size} != interactions {raw_u.size}")
        if ts_arr.dtype.kind == "f":
            if not np.all(np.isfinite(ts_arr)):
                raise ValueError("timestamps contain NaN or infinity")
            ts_arr = np.floor(ts_arr)
        ts = ts_arr.astype(np.int64)
    user, uniq_u = _remap(raw_u)
    item, uniq_i = _remap(raw_i)
    return _build(user, item, ts, uniq_u, uniq_i)


# --------------------------------------------------------------------------- file reading


def _resolve(path: PathLike, filename: str, description: str) -> Path:
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


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # never fails; ids stay byte-faithful


def _lines(text: str) -> list[str]:
    # Split on '\n' only: str.splitlines() also breaks on \x0b, \x1c, \x85, ... which would
    # shift line numbers relative to what editors show.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _fast_loadtxt(source: object, **kwargs: object) -> np.ndarray | None:
    """np.loadtxt or None when it rejects the input (the slow path then explains why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # empty-input warning; emptiness is reported later
            arr = np.loadtxt(source, comments=None, ndmin=1, **kwargs)  # type: ignore[call-overload]
    except (ValueError, UnicodeDecodeError, OverflowError):
        return None
    return arr if arr.size else None


_NUMERIC_DTYPE = np.dtype([("u", "<i8"), ("i", "<i8"), ("r", "<f8"), ("t", "<i8")])

_Row = tuple[int, str, list[str]]  # (1-based line number, raw line, fields)


def _split_rows(lines: Sequence[str], delimiter: str | None, start: int = 0) -> Iterator[_Row]:
    """Yield non-blank rows as split fields (plain split, no quoting)."""
    for idx in range(start, len(lines)):
        line = lines[idx]
        if not line.strip():
            continue
        fields = line.split() if delimiter is None else line.split(delimiter)
        yield idx + 1, line, fields


def _csv_rows(lines: Sequence[str], delimiter: str, start: int = 0) -> Iterator[_Row]:
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
class _Columns:
    ncols: int  # fields every row must have
    user: int
    item: int
    rating: int | None
    timestamp: int | None


def _parse_rows(
    path: Path,
    rows: Iterable[_Row],
    cols: _Columns,
    *,
    integer_ids: bool,
    integer_ts: bool,
    expected: str,
    delimiter_name: str,
    end_line: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Line-by-line reference parser: returns raw (users, items, timestamps) or raises at the
    first bad line."""
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []

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
            if integer_ids and not _INT_RE.match(value):
                raise fail(line_no, line, f"{name} id {value!r} is not an integer")
        if cols.rating is not None:
            value = fields[cols.rating].strip()
            if not _is_number(value):
                raise fail(line_no, line, f"rating {value!r} is not a number")
        ts = 0
        if cols.timestamp is not None:
            value = fields[cols.timestamp].strip()
            ts_or_none = _parse_timestamp(value, integer_only=integer_ts)
            if ts_or_none is None:
                what = "an integer" if integer_ts else "a number"
                raise fail(line_no, line, f"timestamp {value!r} is not {what} in int64 range")
            ts = ts_or_none
        users.append(fields[cols.user].strip())
        items.append(fields[cols.item].strip())
        times.append(ts)
    if not users:
        raise fail(end_line, "", "no data rows (file is empty or has only a header)")
    return _ids_from_strings(users), _ids_from_strings(items), np.asarray(times, dtype=np.int64)


def _parse_timestamp(value: str, *, integer_only: bool) -> int | None:
    """Timestamp as int (fractions floored), or None if it is not a representable number."""
    try:
        ts = int(value) if _INT_RE.match(value) else None
        if ts is None and not integer_only:
            ts = math.floor(float(value))
    except (ValueError, OverflowError):  # nan / inf
        return None
    if ts is None or not -(2**63) <= ts < 2**63:
        return None
    return ts


def _ids_from_strings(values: list[str]) -> np.ndarray:
    """int64 if every id is an integer literal, else the strings themselves."""
    if all(_INT_RE.match(v) for v in values):
        try:
            return np.array([int(v) for v in values], dtype=np.int64)
        except OverflowError:
            pass
    return np.array(values, dtype=str)


def _from_struct(arr: np.ndarray) -> Interactions:
    return from_arrays(arr["u"], arr["i"], arr["t"])


# --------------------------------------------------------------------------- MovieLens loaders


def load_ml100k(path: PathLike) -> Interactions:
    """Load MovieLens-100K ``u.data`` (user \\t item \\t rating \\t timestamp).

    ``path`` is the ``ml-100k`` directory or the ``u.data`` file itself.
    """
    f = _resolve(path, "u.data", "MovieLens-100K ratings file")
    arr = _fast_loadtxt(f, delimiter="\t", dtype=_NUMERIC_DTYPE, encoding="utf-8")
    if arr is not None:
        return _from_struct(arr)
    lines = _lines(_read_text(f))
    users, items, ts = _parse_rows(
        f,
        _split_rows(lines, "\t"),
        _Columns(4, 0, 1, 2, 3),
        integer_ids=True,
        integer_ts=True,
        expected=ML100K_FORMAT,
        delimiter_name="tabs",
        end_line=len(lines) + 1,
    )
    return from_arrays(users, items, ts)


def _load_double_colon(f: Path) -> Interactions | None:
    """Fast path for '::' files of 4 integer/numeric fields: swap '::' for a tab and let the C
    reader parse it; None when that fails."""
    data = f.read_bytes()
    if b"\t" not in data:
        # A stray tab would masquerade as a separator after the swap, so only swap tab-free data.
        swapped = io.TextIOWrapper(io.BytesIO(data.replace(b"::", b"\t")), encoding="utf-8")
        del data
        arr = _fast_loadtxt(swapped, delimiter="\t", dtype=_NUMERIC_DTYPE)
        if arr is not None:
            return _from_struct(arr)
    return None


def load_ml_dat(path: PathLike) -> Interactions:
    """Load MovieLens-1M/10M ``ratings.dat`` (UserID::MovieID::Rating::Timestamp).

    ``path`` is the dataset directory or the ``ratings.dat`` file itself.
    """
    f = _resolve(path, "ratings.dat", "MovieLens ratings file")
    cols = _Columns(4, 0, 1, 2, 3)
    fast = _load_double_colon(f)
    if fast is not None:
        return fast
    lines = _lines(_read_text(f))
    users, items, ts = _parse_rows(
        f,
        _split_rows(lines, "::"),
        cols,
        integer_ids=True,
        integer_ts=True,
        expected=ML_DAT_FORMAT,
        delimiter_name="'::'",
        end_line=len(lines) + 1,
    )
    return from_arrays(users, items, ts)


_ML_CSV_COLUMNS = ("userid", "movieid", "rating", "timestamp")


def _first_content_line(lines: Sequence[str]) -> int | None:
    return next((k for k, ln in enumerate(lines) if ln.strip()), None)


def load_movielens_csv(path: PathLike) -> Interactions:
    """Load MovieLens latest/20M/25M ``ratings.csv`` (header ``userId,movieId,rating,timestamp``).

    ``path`` is the dataset directory or the ``ratings.csv`` file itself. Columns are located by
    header name (case-insensitive), so extra or reordered columns are fine.
    """
    f = _resolve(path, "ratings.csv", "MovieLens ratings file")
    # Only the header is needed up front; the body goes straight to the C reader.
    with open(f, encoding="utf-8-sig", errors="replace", newline="") as fh:
        head_lines: list[str] = []
        for raw in fh:
            head_lines.append(raw.rstrip("\r\n"))
            if raw.strip():
                break
    header_idx = _first_content_line(head_lines)
    if header_idx is None:
        raise DataFormatError(
            f, len(head_lines) + 1, "file is empty", "", "a header line: " + ML_CSV_FORMAT
        )
    header_line = head_lines[header_idx]
    names = [h.strip().strip('"').lower() for h in header_line.split(",")]
    missing = [c for c in _ML_CSV_COLUMNS if c not in names]
    if missing:
        raise DataFormatError(
            f,
            header_idx + 1,
            f"header lacks column(s) {', '.join(missing)}",
            header_line,
            ML_CSV_FORMAT,
        )
    cols = _Columns(len(names), *(names.index(c) for c in _ML_CSV_COLUMNS))
    arr = None
    if len(names) == 4:
        # Exactly the four columns (any order): parse strictly, every row must have 4 fields.
        positions = {"u": cols.user, "i": cols.item, "r": cols.rating, "t": cols.timestamp}
        by_position = sorted(positions, key=positions.__getitem__)
        dtype = np.dtype([(n, _NUMERIC_DTYPE[n]) for n in by_position])
        arr = _fast_loadtxt(
            f, delimiter=",", dtype=dtype, skiprows=header_idx + 1, encoding="utf-8"
        )
    if arr is not None:
        return _from_struct(arr)
    lines = _lines(_read_text(f))
    users, items, ts = _parse_rows(
        f,
        _split_rows(lines, ",", start=header_idx + 1),
        cols,
        integer_ids=True,
        integer_ts=True,
        expected=ML_CSV_FORMAT,
        delimiter_name="commas",
        end_line=len(lines) + 1,
    )
    return from_arrays(users, items, ts)


# --------------------------------------------------------------------------- generic CSV / TSV

# Header names (lower-cased, non-alphanumerics dropped) used to spot a header row and to pick
# columns by name; exact matches only, so ids such as "user_7" are never mistaken for names.
_USER_NAMES = frozenset({"user", "userid", "uid", "users", "customer", "customerid", "reviewerid"})
_ITEM_NAMES = frozenset(
    "item itemid iid items movie movieid product productid asin track trackid song songid "
    "book bookid isbn article articleid".split()
)
_RATING_NAMES = frozenset({"rating", "ratings", "score", "stars", "overall", "value", "weight"})
_TIME_NAMES = frozenset({"timestamp", "time", "ts", "unixtime", "unixreviewtime", "datetime"})
_ALL_NAMES = _USER_NAMES | _ITEM_NAMES | _RATING_NAMES | _TIME_NAMES

_DELIMITER_NAMES = {"\t": "tabs", ",": "commas", ";": "semicolons", "|": "'|'", "::": "'::'"}
_WHITESPACE_ALIASES = ("whitespace", " ", r"\s+")
_DELIMITER_ALIASES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
_HEADER_SAMPLE = 50


def _norm_name(field: str) -> str:
    return re.sub(r"[^a-z0-9]", "", field.lower())


def _detect_delimiter(sample: Sequence[str]) -> str | None:
    """Pick the separator that splits every sampled line; None means runs of whitespace."""
    if all("::" in ln for ln in sample):
        return "::"
    candidates = ("\t", ",", ";", "|")
    for d in candidates:  # same non-zero count on every line: the clearest signal
        counts = {ln.count(d) for ln in sample}
        if len(counts) == 1 and counts != {0}:
            return d
    for d in candidates:  # counts vary (quoted fields, a malformed line): still present everywhere
        if all(d in ln for ln in sample):
            return d
    for d in candidates:
        if d in sample[0]:
            return d
    return None


def _looks_like_header(rows: Sequence[list[str]]) -> bool:
    first = [f.strip() for f in rows[0]]
    if any(_norm_name(f) in _ALL_NAMES for f in first):
        return True
    if any(not _is_number(f) for f in first[2:]):  # rating/timestamp positions must be numeric
        return True
    rest = rows[1:]
    # An id column that is integer everywhere except the first row: the first row is a header.
    return bool(rest) and any(
        not _INT_RE.match(first[c])
        and all(len(r) > c and _INT_RE.match(r[c].strip()) for r in rest)
        for c in range(min(2, len(first)))
    )


def _columns_from_names(names: Sequence[str]) -> _Columns | None:
    norm = [_norm_name(n) for n in names]

    def find(candidates: frozenset[str], taken: set[int]) -> int | None:
        return next((k for k, n in enumerate(norm) if n in candidates and k not in taken), None)

    taken: set[int] = set()
    found = []
    for group in (_USER_NAMES, _ITEM_NAMES, _RATING_NAMES, _TIME_NAMES):
        k = find(group, taken)
        found.append(k)
        if k is not None:
            taken.add(k)
    user, item, rating, timestamp = found
    if user is None or item is None:
        return None
    return _Columns(len(names), user, item, rating, timestamp)


def _resolve_csv(path: PathLike) -> Path:
    """A CSV/TSV file, or a directory holding exactly one ``.csv``/``.tsv`` file."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        found = sorted(
            x for x in p.iterdir() if x.is_file() and x.suffix.lower() in (".csv", ".tsv")
        )
        if len(found) == 1:
            return found[0]
        if not found:
            raise FileNotFoundError(
                f"{p}: no .csv or .tsv file found; expected exactly one ratings file "
                f"({CSV_FORMAT}) in this directory, or the path of the file itself"
            )
        listing = ", ".join(x.name for x in found)
        raise ValueError(f"{p} holds several .csv/.tsv files ({listing}); point at one file")
    raise FileNotFoundError(
        f"{p} not found: expected a CSV/TSV ratings file ({CSV_FORMAT}) or a directory "
        f"containing exactly one"
    )


def load_csv(
    path: PathLike, delimiter: str | None = None, header: bool | None = None
) -> Interactions:
    """Load any delimited file of ``user,item[,rating][,timestamp]`` rows.

    ``delimiter``: ',', '\\t' (or 'tab'), ';', '|', '::', 'whitespace' (or ' '), any single
    character, or None to detect it from the first lines. ``header``: None detects it (known
    column names such as ``userId``/``item_id``/``rating``, or non-numeric values where numbers
    follow). With a recognisable header, columns are picked by name (so extra columns are fine);
    otherwise they are positional: 2 fields = user,item; 3 = user,item,rating;
    4 = user,item,rating,timestamp. Ids may be strings; they are integers only when every id in
    the column is an integer. Timestamps must be numeric (fractions are floored). ``path`` may
    also be a directory holding exactly one .csv/.tsv file.
    """
    f = _resolve_csv(path)
    text = _read_text(f)
    lines = _lines(text)
    start = _first_content_line(lines)
    if start is None:
        raise DataFormatError(f, len(lines) + 1, "file is empty", "", CSV_FORMAT)
    sample = [ln for ln in lines[start : start + 4 * _HEADER_SAMPLE] if ln.strip()]
    sample = sample[:_HEADER_SAMPLE]

    if delimiter is None:
        delim = _detect_delimiter(sample)
    elif delimiter in _WHITESPACE_ALIASES:
        delim = None
    elif delimiter == "":
        raise ValueError("delimiter must be non-empty (use None to detect it)")
    else:
        delim = _DELIMITER_ALIASES.get(delimiter, delimiter)
    delimiter_name = "whitespace" if delim is None else _DELIMITER_NAMES.get(delim, repr(delim))

    def rows(begin: int) -> Iterator[_Row]:
        if delim is None or len(delim) > 1:
            return _split_rows(lines, delim, begin)
        return _csv_rows(lines, delim, begin)

    sample_rows = [fields for _, _, fields in _take(rows(start), _HEADER_SAMPLE)]
    has_header = _looks_like_header(sample_rows) if header is None else header
    expected = f"{CSV_FORMAT}, separated by {delimiter_name}"
    first_line = lines[start]
    cols = _columns_from_names(sample_rows[0]) if has_header else None
    if cols is None:
        n = len(sample_rows[0])
        if not 2 <= n <= 4:
            raise DataFormatError(
                f,
                start + 1,
                f"cannot tell user and item columns apart in {n} field(s) separated by "
                f"{delimiter_name}",
                first_line,
                expected + " (or a header naming the user and item columns)",
            )
        cols = _Columns(n, 0, 1, 2 if n >= 3 else None, 3 if n == 4 else None)
    body = start + 1 if has_header else start

    data_rows = sample_rows[1:] if has_header else sample_rows
    fast = _load_csv_fast(text, delim, cols, body, data_rows)
    if fast is not None:
        return fast
    users, items, ts = _parse_rows(
        f,
        rows(body),
        cols,
        integer_ids=False,
        integer_ts=False,
        expected=expected,
        delimiter_name=delimiter_name,
        end_line=len(lines) + 1,
    )
    return from_arrays(users, items, ts)


def _take(it: Iterator[_Row], n: int) -> list[_Row]:
    out = []
    for row in it:
        out.append(row)
        if len(out) >= n:
            break
    return out


def _load_csv_fast(
    text: str, delim: str | None, cols: _Columns, body: int, sample: Sequence[list[str]]
) -> Interactions | None:
    """C-reader path for integer ids when every column is used; None -> use the slow path."""
    used = [c for c in (cols.user, cols.item, cols.rating, cols.timestamp) if c is not None]
    if len(used) != cols.ncols:
        return None

    def all_int(col: int) -> bool:
        return all(len(r) > col and _INT_RE.match(r[col].strip().strip('"')) for r in sample)

    if not (all_int(cols.user) and all_int(cols.item)):
        return None  # string ids: a C-reader attempt would only fail after a full parse
    # Integer timestamps parse faster and exactly; a later fractional one sends us to the slow
    # path, which floors it.
    ts_int = cols.timestamp is not None and all_int(cols.timestamp)
    kwargs: dict[str, object] = {}
    if delim == "::":
        if "\t" in text:
            return None
        text, delim = text.replace("::", "\t"), "\t"
    if delim is not None:
        if len(delim) != 1:
            return None
        kwargs["quotechar"] = '"'
    kinds = {cols.user: ("u", "<i8"), cols.item: ("i", "<i8")}
    if cols.rating is not None:
        kinds[cols.rating] = ("r", "<f8")
    if cols.timestamp is not None:
        kinds[cols.timestamp] = ("t", "<i8" if ts_int else "<f8")
    dtype = np.dtype([kinds[k] for k in range(cols.ncols)])
    arr = _fast_loadtxt(io.StringIO(text), delimiter=delim, dtype=dtype, skiprows=body, **kwargs)
    if arr is None:
        return None
    if cols.timestamp is None:
        ts = np.zeros(arr.shape[0], dtype=np.int64)
    elif ts_int:
        ts = arr["t"]
    else:
        t = arr["t"]
        if not np.all(np.isfinite(t)) or np.abs(t).max() >= 2**53:
            return None  # let the exact slow path decide
        ts = np.floor(t).astype(np.int64)
    return from_arrays(arr["u"], arr["i"], ts)


# --------------------------------------------------------------------------- synthetic data

_SYNTH_T0 = 880_000_000  # ~Nov 1997, MovieLens-like epoch seconds
_SYNTH_START_SPREAD = 2 * 365 * 86_400  # users join over two years
_SYNTH_MEAN_GAP = 6 * 3_600  # mean seconds between a user's consecutive interactions
_SYNTH_AFFINITY_SCALE = 2.0  # std of the taste logit; popularity logits span ~5 for 500 items
_SYNTH_ACTIVITY_SIGMA = 0.8  # log-normal spread of per-user interaction counts
_SYNTH_MIN_NEGATIVES = 100  # 99 sampled negatives + 1 held-out positive must always exist


def synthetic(
    num_users: int = 300,
    num_items: int = 500,
    seed: int = 0,
    *,
    dim: int = 8,
    min_per_user: int = 10,
    max_per_user: int = 150,
    popularity_exponent: float = 0.8,
) -> Interactions:
    """Seeded synthetic implicit feedback with learnable structure.

    Users and items get Gaussian latent factors of size ``dim``; items also get a Zipf-like
    popularity ``(rank+1) ** -popularity_exponent`` over a random ranking. Each user's activity is
    log-normal, clipped to ``[min_per_user, max_per_user]`` and -- so that every user keeps at
    least 100 unseen items (99 sampled negatives plus slack for a held-out positive) -- to at
    most ``num_items - 100`` items when ``num_items > 110`` (``num_items - 1`` otherwise). Items
    are drawn without replacement with probability proportional to
    ``popularity * exp(affinity)`` (Gumbel top-k), then placed in random order on strictly
    increasing per-user timestamps. ``num_items`` is kept even if some item is never drawn, and
    raw ids are ``0..n-1``. The same arguments always give identical output.
    """
    if num_users < 1 or num_items < 2:
        raise ValueError(f"need num_users >= 1 and num_items >= 2, got {num_users}, {num_items}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if min_per_user < 2:
        raise ValueError(f"min_per_user must be >= 2 (train + held-out), got {min_per_user}")
    if max_per_user < min_per_user:
        raise ValueError(f"max_per_user ({max_per_user}) < min_per_user ({min_per_user})")
    cap = num_items - _SYNTH_MIN_NEGATIVES if num_items > 110 else num_items - 1
    hi = min(max_per_user, cap)
    if hi < min_per_user:
        raise ValueError(
            f"num_items={num_items} allows at most {cap} items per user, fewer than "
            f"min_per_user={min_per_user}"
        )
    rng = np.random.default_rng(seed)
    user_f = rng.standard_normal((num_users, dim))
    item_f = rng.standard_normal((num_items, dim))
    # Random ranking so that an item's id says nothing about its popularity.
    log_pop = -popularity_exponent * np.log1p(rng.permutation(num_items))
    mu = 0.5 * (math.log(min_per_user) + math.log(hi))
    counts = np.exp(rng.normal(mu, _SYNTH_ACTIVITY_SIGMA, num_users))
    counts = np.clip(np.rint(counts), min_per_user, hi).astype(np.int64)

    scale = _SYNTH_AFFINITY_SCALE / math.sqrt(dim)
    block = max(1, (1 << 21) // num_items)  # bound the dense score matrix to ~16 MB
    chosen: list[np.ndarray] = []
    for lo in range(0, num_users, block):
        sl = slice(lo, min(lo + block, num_users))
        noise = rng.gumbel(size=(sl.stop - lo, num_items))
        logits = log_pop + scale * (user_f[sl] @ item_f.T) + noise
        k = int(counts[sl].max())
        # Gumbel top-k == sampling k items without replacement proportionally to exp(logit).
        top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(logits, top, 1), 1), 1)
        chosen.append(top[np.arange(k) < counts[sl, None]])
    item = np.concatenate(chosen).astype(np.int64)
    user = np.repeat(np.arange(num_users, dtype=np.int64), counts)
    # Shuffle each user's items in time so the latest one is a random positive, not the weakest.
    item = item[np.lexsort((rng.random(item.size), user))]
    gaps = 1 + np.floor(rng.exponential(_SYNTH_MEAN_GAP, item.size)).astype(np.int64)
    starts = _SYNTH_T0 + rng.integers(0, _SYNTH_START_SPREAD, num_users)
    csum = np.cumsum(gaps)
    offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
    before = np.where(offsets > 0, csum[offsets - 1], 0)  # gap total before each user's block
    timestamp = starts[user] + csum - np.repeat(before, counts)
    ids_u = np.arange(num_users, dtype=np.int64)
    ids_i = np.arange(num_items, dtype=np.int64)
    return Interactions(user, item, timestamp, num_users, num_items, ids_u, ids_i)


# --------------------------------------------------------------------------- dataset registry

_DATASET_FILES = {
    "ml-100k": ("u.data", load_ml100k),
    "ml-1m": ("ratings.dat", load_ml_dat),
    "movielens-csv": ("ratings.csv", load_movielens_csv),
    "csv": ("a .csv/.tsv ratings file", load_csv),
}


def load_dataset(
    name: str,
    data_dir: str | None = None,
    *,
    seed: int = 0,
    synthetic_users: int = 300,
    synthetic_items: int = 500,
) -> Interactions:
    """Load a dataset by name (one of :data:`DATASETS`).

    ``synthetic`` ignores ``data_dir``; ``ml-100k`` / ``ml-1m`` (also fits ML-10M) /
    ``movielens-csv`` take the directory holding ``u.data`` / ``ratings.dat`` / ``ratings.csv``
    (or the file); ``csv`` takes a file, or a directory with exactly one .csv/.tsv file.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if name == "synthetic":
        return synthetic(synthetic_users, synthetic_items, seed)
    expected, loader = _DATASET_FILES[name]
    if not data_dir:
        raise ValueError(
            f"dataset {name!r} reads files: set `data-dir` to the directory containing "
            f"{expected} (or to the file itself)"
        )
    loader_fn: Callable[[PathLike], Interactions] = loader
    return loader_fn(data_dir)
