"""Interaction data for Confide: where a run's interactions come from.

One module per idea: :mod:`~shared.data.interactions` (the container every source ends in),
:mod:`~shared.data.reading` (rows out of a text file, the reference parser, its error),
:mod:`~shared.data.movielens` and :mod:`~shared.data.delimited` (the file formats) and
:mod:`~shared.data.generator` (synthetic data). This module names the datasets a config may pick
and loads one by name.
"""

from __future__ import annotations

from collections.abc import Callable

from shared.data.delimited import CSV_FORMAT, load_csv
from shared.data.generator import synthetic
from shared.data.interactions import Interactions, from_arrays
from shared.data.movielens import (
    ML100K_FORMAT,
    ML_CSV_FORMAT,
    ML_DAT_FORMAT,
    load_ml100k,
    load_ml_dat,
    load_movielens_csv,
)
from shared.data.reading import DataFormatError, PathLike

__all__ = [
    "CSV_FORMAT",
    "DATASETS",
    "DataFormatError",
    "Interactions",
    "ML100K_FORMAT",
    "ML_CSV_FORMAT",
    "ML_DAT_FORMAT",
    "from_arrays",
    "load_csv",
    "load_dataset",
    "load_ml100k",
    "load_ml_dat",
    "load_movielens_csv",
    "synthetic",
]

DATASETS = ("synthetic", "ml-100k", "ml-1m", "movielens-csv", "csv")

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
