"""Public item features (Wide & Deep style): MovieLens catalogues (ML-100K ``u.item``, ML-1M
``movies.dat``, latest/20M/25M ``movies.csv``) and any CSV of numeric item features.

The features are PUBLIC catalogue data: every side (server, devices) loads them from the same
catalogue file, nothing about them is sent or trained, so they cost no privacy.

Rows land on the split's DENSE item ids through ``raw_item_ids`` (the dense->raw mapping after
filters); catalogue rows for items the interactions do not use are ignored. An item without a
row gets zeros plus a 1 in the last column, ``missing`` (so the model can tell "no genres" from
"unknown"); refusing would make every catalogue gap fatal. Release year is ``(year - 1900) / 100``
(about 0..1.3 for the MovieLens range); an unknown year gives 0 and sets ``year_unknown``.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.data.reading import DataFormatError, PathLike, read_text, split_lines

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
U_ITEM_FORMAT = "24 '|'-separated fields: id|title|release date|video date|url|19 genre flags 0/1"
MOVIES_FORMAT = "movieId, title ending in '(YYYY)', genres separated by '|'"
CSV_FORMAT = "a CSV whose first column is the item id and the other columns are numbers"
_YEAR_RE = re.compile(r"\((\d{4})\)\s*$")
_DATE_RE = re.compile(r"\d{1,2}-[A-Za-z]{3}-(\d{4})\Z")


@dataclass(frozen=True)
class ItemFeatures:
    """Dense-id-aligned feature matrix: ``matrix[i]`` is item i's features (float32)."""

    matrix: np.ndarray
    names: tuple[str, ...]
    source: str
    num_missing: int

    def describe(self) -> dict[str, object]:
        """What data.json records: which features were used."""
        return {
            "source": self.source,
            "names": list(self.names),
            "dim": len(self.names),
            "items_without_row": self.num_missing,
        }


def _year(value: float | None) -> tuple[float, float]:
    return (0.0, 1.0) if value is None else ((value - 1900.0) / 100.0, 0.0)


def _read_u_item(f: Path) -> tuple[dict[str, list[float]], list[str]]:
    rows: dict[str, list[float]] = {}
    for n, line in enumerate(split_lines(read_text(f)), 1):
        if not line.strip():
            continue
        parts = line.rstrip("\r").split("|")
        if len(parts) != 24:
            raise DataFormatError(f, n, f"{len(parts)} fields", line, U_ITEM_FORMAT)
        flags = parts[5:]
        if any(v not in ("0", "1") for v in flags):
            raise DataFormatError(f, n, "a genre flag is not 0 or 1", line, U_ITEM_FORMAT)
        if not parts[0].strip().isdigit():
            raise DataFormatError(
                f, n, f"item id {parts[0]!r} is not an integer", line, U_ITEM_FORMAT
            )
        m = _DATE_RE.match(parts[2].strip())
        if parts[2].strip() and not m:
            raise DataFormatError(
                f, n, f"release date {parts[2]!r} is not DD-Mon-YYYY", line, U_ITEM_FORMAT
            )
        rows[str(int(parts[0]))] = [float(v) for v in flags] + list(
            _year(float(m.group(1)) if m else None)
        )
    return rows, list(ML100K_GENRES) + ["year", "year_unknown"]


def _read_movies(f: Path, sep: str) -> tuple[dict[str, list[float]], list[str]]:
    lines = split_lines(read_text(f))
    parsed: list[tuple[int, str, float | None, list[str]]] = []
    if sep == ",":
        records = list(csv.reader(lines))
        start = 1
        if not records or [c.strip().lower() for c in records[0][:3]] != [
            "movieid",
            "title",
            "genres",
        ]:
            raise DataFormatError(
                f, 1, "header is not movieId,title,genres", lines[0] if lines else "", MOVIES_FORMAT
            )
    else:
        records = [line.rstrip("\r").split("::") for line in lines]
        start = 0
    for n, rec in enumerate(records[start:], start + 1):
        if not rec or not "".join(rec).strip():
            continue
        line = lines[n - 1] if n - 1 < len(lines) else ""
        if len(rec) != 3:
            raise DataFormatError(f, n, f"{len(rec)} fields", line, MOVIES_FORMAT)
        if not rec[0].strip().isdigit():
            raise DataFormatError(
                f, n, f"movie id {rec[0]!r} is not an integer", line, MOVIES_FORMAT
            )
        m = _YEAR_RE.search(rec[1])
        genres = [g for g in rec[2].strip().split("|") if g and g != "(no genres listed)"]
        parsed.append((int(rec[0]), rec[1], float(m.group(1)) if m else None, genres))
    vocab = sorted({g for *_, gs in parsed for g in gs})
    col = {g: i for i, g in enumerate(vocab)}
    rows: dict[str, list[float]] = {}
    for item, _title, year, genres in parsed:
        vec = [0.0] * len(vocab)
        for g in genres:
            vec[col[g]] = 1.0
        rows[str(item)] = vec + list(_year(year))
    return rows, vocab + ["year", "year_unknown"]


def _read_csv(f: Path) -> tuple[dict[str, list[float]], list[str]]:
    lines = split_lines(read_text(f))
    records = list(csv.reader(lines))
    if not records or len(records[0]) < 2:
        raise DataFormatError(
            f,
            1,
            "no header with an id column and feature columns",
            lines[0] if lines else "",
            CSV_FORMAT,
        )
    names = [c.strip() for c in records[0][1:]]
    rows: dict[str, list[float]] = {}
    for n, rec in enumerate(records[1:], 2):
        if not rec or not "".join(rec).strip():
            continue
        line = lines[n - 1]
        if len(rec) != len(names) + 1:
            raise DataFormatError(
                f, n, f"{len(rec)} fields, header has {len(names) + 1}", line, CSV_FORMAT
            )
        try:
            vals = [float(v) for v in rec[1:]]
        except ValueError:
            raise DataFormatError(
                f, n, "a feature value is not a number", line, CSV_FORMAT
            ) from None
        if not all(np.isfinite(vals)):
            raise DataFormatError(f, n, "a feature value is NaN or infinite", line, CSV_FORMAT)
        key = rec[0].strip()
        if key in rows:
            raise DataFormatError(f, n, f"item id {key!r} appears twice", line, CSV_FORMAT)
        rows[key] = vals
    return rows, names


def movielens_catalogue(data_dir: PathLike) -> Path:
    """The dataset's own catalogue file: u.item, movies.dat or movies.csv in ``data_dir``."""
    d = Path(data_dir).expanduser()
    d = d if d.is_dir() else d.parent
    for name in ("u.item", "movies.dat", "movies.csv"):
        if (d / name).is_file():
            return d / name
    raise FileNotFoundError(
        f"no MovieLens catalogue (u.item, movies.dat or movies.csv) in {d}: ship it next to the "
        'ratings, or set item-features to a CSV path or ""'
    )


def load_item_features(path: PathLike, raw_item_ids: np.ndarray) -> ItemFeatures:
    """Features for the dense items whose raw ids are ``raw_item_ids`` (index = dense id)."""
    f = Path(path).expanduser()
    if not f.is_file():
        raise FileNotFoundError(f"{f} not found: expected an item-features file ({CSV_FORMAT})")
    if f.name == "u.item":
        rows, names = _read_u_item(f)
    elif f.name == "movies.dat":
        rows, names = _read_movies(f, "::")
    elif f.name == "movies.csv":
        rows, names = _read_movies(f, ",")
    else:
        rows, names = _read_csv(f)
    dim = len(names)
    matrix = np.zeros((len(raw_item_ids), dim + 1), dtype=np.float32)
    missing = 0
    for dense, raw in enumerate(raw_item_ids):
        key = str(raw.item() if hasattr(raw, "item") else raw).strip()
        row = rows.get(key)
        if row is None:
            matrix[dense, dim] = 1.0
            missing += 1
        else:
            matrix[dense, :dim] = row
    return ItemFeatures(matrix, (*names, "missing"), str(f), missing)
