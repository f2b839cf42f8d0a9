"""Interaction data for Confide: where a run's interactions come from.

One module per idea: :mod:`~shared.data.interactions` (the container every source ends in),
:mod:`~shared.data.reading` (rows out of a text file, the reference parser, its error),
:mod:`~shared.data.movielens` and :mod:`~shared.data.delimited` (the file formats),
:mod:`~shared.data.sniff` (guessing a delimited file's layout), :mod:`~shared.data.generator`
(synthetic data), :mod:`~shared.data.filters` (minimum rating and k-core, before the split) and
:mod:`~shared.data.summary` (what the data was, for the log and ``data.json``). This module
names the datasets a config may pick and loads one by name; :class:`DataSource` is the part of a
run's config that selects its interactions, so a new data key is one field there and reaches
every caller (and the split's cache key).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from shared.data.delimited import AUTO, CSV_FORMAT, CSV_HEADERS, csv_options, load_csv
from shared.data.filters import DataError, FilterReport, filter_interactions
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

if TYPE_CHECKING:
    from shared.config import RunConfig

__all__ = [
    "AUTO",
    "CSV_FORMAT",
    "CSV_HEADERS",
    "DATASETS",
    "DataError",
    "DataFormatError",
    "DataSource",
    "FilterReport",
    "Interactions",
    "ML100K_FORMAT",
    "ML_CSV_FORMAT",
    "ML_DAT_FORMAT",
    "csv_options",
    "dataset_for",
    "filter_interactions",
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
    synthetic_shape: str = "default",
    csv_delimiter: str = AUTO,
    csv_header: str = AUTO,
) -> Interactions:
    """Load a dataset by name (one of :data:`DATASETS`).

    ``synthetic`` ignores ``data_dir``; ``ml-100k`` / ``ml-1m`` (also fits ML-10M) /
    ``movielens-csv`` take the directory holding ``u.data`` / ``ratings.dat`` / ``ratings.csv``
    (or the file); ``csv`` takes a file, or a directory with exactly one .csv/.tsv file, read
    with ``csv_delimiter`` and ``csv_header`` (see :func:`csv_options`; ``"auto"`` detects).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if name == "synthetic":
        return synthetic(synthetic_users, synthetic_items, seed, synthetic_shape)
    expected, loader = _DATASET_FILES[name]
    if not data_dir:
        raise ValueError(
            f"dataset {name!r} reads files: set `data-dir` to the directory containing "
            f"{expected} (or to the file itself)"
        )
    if name == "csv":
        return load_csv(data_dir, *csv_options(csv_delimiter, csv_header))
    loader_fn: Callable[[PathLike], Interactions] = loader
    return loader_fn(data_dir)


@dataclass(frozen=True)
class DataSource:
    """The config keys that select a run's interactions; hashable, so it keys a cache.

    Field names are the :class:`~shared.config.RunConfig` field names, so :meth:`of` picks them
    up by name and a new data key needs only a field here and its branch in :meth:`load`.
    """

    dataset: str
    data_dir: str
    seed: int
    synthetic_users: int
    synthetic_items: int
    synthetic_shape: str
    csv_delimiter: str
    csv_header: str
    min_rating: float
    min_user_interactions: int
    min_item_interactions: int

    @classmethod
    def of(cls, config: RunConfig) -> DataSource:
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})

    def load(self) -> Interactions:
        """The run's interactions, filtered (what every user of the data must see)."""
        return self.prepare()[0]

    def prepare(self) -> tuple[Interactions, FilterReport]:
        """The filtered interactions and what the filters dropped."""
        return filter_interactions(
            self.load_unfiltered(),
            min_rating=self.min_rating,
            min_user=self.min_user_interactions,
            min_item=self.min_item_interactions,
        )

    def load_unfiltered(self) -> Interactions:
        return load_dataset(
            self.dataset,
            self.data_dir or None,
            seed=self.seed,
            synthetic_users=self.synthetic_users,
            synthetic_items=self.synthetic_items,
            synthetic_shape=self.synthetic_shape,
            csv_delimiter=self.csv_delimiter,
            csv_header=self.csv_header,
        )


def dataset_for(config: RunConfig) -> Interactions:
    """The interactions a run's config selects, filtered (every data key reaches them here)."""
    return DataSource.of(config).load()
