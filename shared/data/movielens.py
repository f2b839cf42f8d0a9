"""MovieLens ratings files: ML-100K ``u.data``, ML-1M/10M ``ratings.dat``, latest/20M/25M
``ratings.csv``. Their formats are fixed, so ids and timestamps must be integers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from shared.data.interactions import Interactions, from_arrays
from shared.data.reading import (
    NUMERIC_DTYPE,
    Columns,
    DataFormatError,
    PathLike,
    fast_loadtxt,
    first_content_line,
    from_struct,
    parse_rows,
    read_text,
    resolve,
    split_lines,
    split_rows,
)

ML100K_FORMAT = "4 tab-separated fields: user_id<TAB>item_id<TAB>rating<TAB>timestamp (integers)"
ML_DAT_FORMAT = "4 '::'-separated fields: UserID::MovieID::Rating::Timestamp (integers)"
ML_CSV_FORMAT = "4 comma-separated fields under the header userId,movieId,rating,timestamp"


def load_ml100k(path: PathLike) -> Interactions:
    """Load MovieLens-100K ``u.data`` (user \\t item \\t rating \\t timestamp).

    ``path`` is the ``ml-100k`` directory or the ``u.data`` file itself.
    """
    f = resolve(path, "u.data", "MovieLens-100K ratings file")
    arr = fast_loadtxt(f, delimiter="\t", dtype=NUMERIC_DTYPE, encoding="utf-8")
    if arr is not None:
        return from_struct(arr)
    return _integer_rows(f, "\t", Columns(4, 0, 1, 2, 3), ML100K_FORMAT, "tabs")


def _load_double_colon(f: Path) -> Interactions | None:
    """Fast path for '::' files of 4 integer/numeric fields: swap '::' for a tab and let the C
    reader parse it; None when that fails."""
    data = f.read_bytes()
    if b"\t" not in data:
        # A stray tab would masquerade as a separator after the swap, so only swap tab-free data.
        swapped = io.TextIOWrapper(io.BytesIO(data.replace(b"::", b"\t")), encoding="utf-8")
        del data
        arr = fast_loadtxt(swapped, delimiter="\t", dtype=NUMERIC_DTYPE)
        if arr is not None:
            return from_struct(arr)
    return None


def load_ml_dat(path: PathLike) -> Interactions:
    """Load MovieLens-1M/10M ``ratings.dat`` (UserID::MovieID::Rating::Timestamp).

    ``path`` is the dataset directory or the ``ratings.dat`` file itself.
    """
    f = resolve(path, "ratings.dat", "MovieLens ratings file")
    cols = Columns(4, 0, 1, 2, 3)
    fast = _load_double_colon(f)
    if fast is not None:
        return fast
    return _integer_rows(f, "::", cols, ML_DAT_FORMAT, "'::'")


_ML_CSV_COLUMNS = ("userid", "movieid", "rating", "timestamp")


def load_movielens_csv(path: PathLike) -> Interactions:
    """Load MovieLens latest/20M/25M ``ratings.csv`` (header ``userId,movieId,rating,timestamp``).

    ``path`` is the dataset directory or the ``ratings.csv`` file itself. Columns are located by
    header name (case-insensitive), so extra or reordered columns are fine.
    """
    f = resolve(path, "ratings.csv", "MovieLens ratings file")
    # Only the header is needed up front; the body goes straight to the C reader.
    with open(f, encoding="utf-8-sig", errors="replace", newline="") as fh:
        head_lines: list[str] = []
        for raw in fh:
            head_lines.append(raw.rstrip("\r\n"))
            if raw.strip():
                break
    header_idx = first_content_line(head_lines)
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
    cols = Columns(len(names), *(names.index(c) for c in _ML_CSV_COLUMNS))
    arr = None
    if len(names) == 4:
        # Exactly the four columns (any order): parse strictly, every row must have 4 fields.
        positions = {"u": cols.user, "i": cols.item, "r": cols.rating, "t": cols.timestamp}
        by_position = sorted(positions, key=positions.__getitem__)
        dtype = np.dtype([(n, NUMERIC_DTYPE[n]) for n in by_position])
        arr = fast_loadtxt(f, delimiter=",", dtype=dtype, skiprows=header_idx + 1, encoding="utf-8")
    if arr is not None:
        return from_struct(arr)
    return _integer_rows(f, ",", cols, ML_CSV_FORMAT, "commas", start=header_idx + 1)


def _integer_rows(
    f: Path, delimiter: str, cols: Columns, expected: str, delimiter_name: str, start: int = 0
) -> Interactions:
    """The line-by-line path every MovieLens format falls back to: integer ids and timestamps."""
    lines = split_lines(read_text(f))
    users, items, ts, ratings = parse_rows(
        f,
        split_rows(lines, delimiter, start=start),
        cols,
        integer_ids=True,
        integer_ts=True,
        expected=expected,
        delimiter_name=delimiter_name,
        end_line=len(lines) + 1,
    )
    return from_arrays(users, items, ts, ratings)
