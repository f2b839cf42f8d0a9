"""Any delimited ratings file: ``user,item[,rating][,timestamp]`` rows, delimiter and header
detected unless the run names them (``csv-delimiter``, ``csv-header``)."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from shared.data.interactions import Interactions, from_arrays
from shared.data.reading import (
    INT_RE,
    Columns,
    DataFormatError,
    PathLike,
    Row,
    csv_rows,
    fast_loadtxt,
    first_content_line,
    parse_rows,
    read_text,
    split_lines,
    split_rows,
)
from shared.data.sniff import columns_from_names, detect_delimiter, looks_like_header

CSV_FORMAT = "user,item[,rating][,timestamp] (rating and timestamp numeric)"

# The config keys ``csv-delimiter`` and ``csv-header`` (detection guesses; a file whose first
# row is ambiguous, e.g. string ids without a header, needs them said).
AUTO = "auto"  # detect it from the file's first lines
CSV_HEADERS = (AUTO, "yes", "no")
_HEADER_CHOICES = {AUTO: None, "yes": True, "no": False}

_DELIMITER_NAMES = {"\t": "tabs", ",": "commas", ";": "semicolons", "|": "'|'", "::": "'::'"}
_WHITESPACE_ALIASES = ("whitespace", " ", r"\s+")
_DELIMITER_ALIASES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
_HEADER_SAMPLE = 50


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


def check_delimiter(delimiter: str) -> None:
    """Refuse a delimiter no row could be split by: a quote (it quotes fields), a line break, or
    NUL (refused in any text file)."""
    bad = sorted({c for c in delimiter if c in '"\r\n\0'})
    if bad:
        raise ValueError(
            f"csv-delimiter {delimiter!r} contains {', '.join(map(repr, bad))}, which cannot "
            "separate fields (quotes quote them, line breaks end rows, NUL is not text): use "
            'e.g. ",", "tab", "whitespace" or "auto"'
        )


def csv_options(delimiter: str, header: str) -> tuple[str | None, bool | None]:
    """``csv-delimiter`` / ``csv-header`` values as :func:`load_csv` takes them (None: detect)."""
    if header not in _HEADER_CHOICES:
        raise ValueError(f"csv header must be one of {', '.join(CSV_HEADERS)}, got {header!r}")
    return (None if delimiter == AUTO else delimiter), _HEADER_CHOICES[header]


def load_csv(
    path: PathLike, delimiter: str | None = None, header: bool | None = None
) -> Interactions:
    """Load any delimited file of ``user,item[,rating][,timestamp]`` rows.

    ``delimiter``: ',', '\\t' (or 'tab'), ';', '|', '::', 'whitespace' (or ' '), any single
    character, or None to detect it from the first lines. ``header``: None detects it (known
    column names such as ``userId``/``item_id``/``rating``, or non-numeric values where numbers
    follow). With a recognisable header, columns are picked by name (so extra columns are fine);
    otherwise they are positional: 2 fields = user,item; 3 = user,item,rating (or a count:
    plays, clicks); 4 = user,item,rating,timestamp. Every row is a positive whatever its rating
    (``min-rating`` filters on it later). Ids may be strings; they are integers only when every
    id in the column is an integer. Timestamps must be numeric (fractions are floored). ``path`` may
    also be a directory holding exactly one .csv/.tsv file.
    """
    f = _resolve_csv(path)
    text = read_text(f)
    lines = split_lines(text)
    start = first_content_line(lines)
    if start is None:
        raise DataFormatError(f, len(lines) + 1, "file is empty", "", CSV_FORMAT)
    sample = [ln for ln in lines[start : start + 4 * _HEADER_SAMPLE] if ln.strip()]
    sample = sample[:_HEADER_SAMPLE]

    if delimiter is None:
        delim = detect_delimiter(sample)
    elif delimiter in _WHITESPACE_ALIASES:
        delim = None
    elif delimiter == "":
        raise ValueError("delimiter must be non-empty (use None to detect it)")
    else:
        check_delimiter(delimiter)
        delim = _DELIMITER_ALIASES.get(delimiter, delimiter)
    delimiter_name = "whitespace" if delim is None else _DELIMITER_NAMES.get(delim, repr(delim))

    def rows(begin: int) -> Iterator[Row]:
        if delim is None or len(delim) > 1:
            return split_rows(lines, delim, begin)
        return csv_rows(lines, delim, begin)

    sample_rows = [fields for _, _, fields in _take(rows(start), _HEADER_SAMPLE)]
    has_header = looks_like_header(sample_rows) if header is None else header
    expected = f"{CSV_FORMAT}, separated by {delimiter_name}"
    first_line = lines[start]
    cols = columns_from_names(sample_rows[0]) if has_header else None
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
        cols = Columns(n, 0, 1, 2 if n >= 3 else None, 3 if n == 4 else None)
    body = start + 1 if has_header else start

    data_rows = sample_rows[1:] if has_header else sample_rows
    fast = _load_csv_fast(text, delim, cols, body, data_rows)
    if fast is not None:
        return fast
    users, items, ts, ratings = parse_rows(
        f,
        rows(body),
        cols,
        integer_ids=False,
        integer_ts=False,
        expected=expected,
        delimiter_name=delimiter_name,
        end_line=len(lines) + 1,
    )
    return from_arrays(users, items, ts, ratings)


def _take(it: Iterator[Row], n: int) -> list[Row]:
    out = []
    for row in it:
        out.append(row)
        if len(out) >= n:
            break
    return out


def _load_csv_fast(
    text: str, delim: str | None, cols: Columns, body: int, sample: Sequence[list[str]]
) -> Interactions | None:
    """C-reader path for integer ids when every column is used; None -> use the slow path."""
    used = [c for c in (cols.user, cols.item, cols.rating, cols.timestamp) if c is not None]
    if len(used) != cols.ncols:
        return None

    def all_int(col: int) -> bool:
        return all(len(r) > col and INT_RE.match(r[col].strip().strip('"')) for r in sample)

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
    arr = fast_loadtxt(io.StringIO(text), delimiter=delim, dtype=dtype, skiprows=body, **kwargs)
    if arr is None:
        return None
    ratings = None if cols.rating is None else arr["r"]
    if cols.timestamp is None:
        ts = None
    elif ts_int:
        ts = arr["t"]
    else:
        t = arr["t"]
        if not np.all(np.isfinite(t)) or np.abs(t).max() >= 2**53:
            return None  # let the exact slow path decide
        ts = np.floor(t).astype(np.int64)
    return from_arrays(arr["u"], arr["i"], ts, ratings)
