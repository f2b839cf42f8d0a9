"""Tests for shared.data itself: datasets by name, DataSource, dataset_for and the csv keys."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from shared.config import ConfigError
from shared.data import (
    DATASETS,
    DataSource,
    csv_options,
    dataset_for,
    load_dataset,
    synthetic,
)
from shared.split import split_for
from tests.conftest import small_config
from tests.shared.data_golden import FIXTURES, ML100K_GOLDEN, assert_golden, write


def test_load_dataset_dispatch() -> None:
    assert DATASETS == ("synthetic", "ml-100k", "ml-1m", "movielens-csv", "csv")
    assert_golden(load_dataset("ml-100k", str(FIXTURES / "ml100k")), **ML100K_GOLDEN)
    assert len(load_dataset("ml-1m", str(FIXTURES / "ml1m"))) == 4
    assert len(load_dataset("movielens-csv", str(FIXTURES / "mlcsv"))) == 3
    assert len(load_dataset("csv", str(FIXTURES / "generic.tsv"))) == 3
    syn = load_dataset("synthetic", seed=3, synthetic_users=40, synthetic_items=200)
    ref = synthetic(40, 200, 3)
    assert syn.num_users == 40 and syn.num_items == 200
    assert np.array_equal(syn.item, ref.item) and np.array_equal(syn.timestamp, ref.timestamp)


def test_load_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        load_dataset("movielens")
    for name in DATASETS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="data-dir"):
        load_dataset("ml-100k")
    with pytest.raises(FileNotFoundError) as missing:
        load_dataset("ml-100k", str(tmp_path))
    assert str(tmp_path / "u.data") in str(missing.value)
    with pytest.raises(FileNotFoundError, match="ratings.dat"):
        load_dataset("ml-1m", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"\.csv or \.tsv"):
        load_dataset("csv", str(tmp_path))


# A first row that header detection takes for column names (non-integer above integer ids).
AMBIGUOUS = "a;b\n1;2\n3;4\n"


@pytest.mark.parametrize(
    ("delimiter", "header", "expected"),
    [
        ("auto", "auto", (None, None)),
        (";", "no", (";", False)),
        ("tab", "yes", ("tab", True)),
        ("whitespace", "auto", ("whitespace", None)),
    ],
)
def test_csv_options_map_config_values_to_load_csv(delimiter, header, expected) -> None:
    assert csv_options(delimiter, header) == expected


def test_csv_options_reject_unknown_header() -> None:
    with pytest.raises(ValueError, match="csv header must be one of auto, yes, no"):
        csv_options("auto", "maybe")


def test_load_dataset_passes_csv_options(tmp_path: Path) -> None:
    path = str(write(tmp_path, "r.txt", AMBIGUOUS))
    detected = load_dataset("csv", path)
    assert len(detected) == 2  # "a;b" taken as a header
    said = load_dataset("csv", path, csv_delimiter="semicolon", csv_header="no")
    assert len(said) == 3 and said.raw_user_ids.tolist() == ["1", "3", "a"]


def test_config_keys_reach_the_csv_loader(tmp_path: Path) -> None:
    # Before the filters (every user here has one interaction: min-user-interactions drops all).
    path = str(write(tmp_path, "r.txt", AMBIGUOUS))
    assert len(DataSource.of(small_config(dataset="csv", data_dir=path)).load_unfiltered()) == 2
    config = small_config(dataset="csv", data_dir=path, csv_delimiter=";", csv_header="no")
    assert len(DataSource.of(config).load_unfiltered()) == 3


def test_data_source_is_the_configs_data_keys() -> None:
    config = small_config(seed=4)
    source = DataSource.of(config)
    assert {f.name: getattr(source, f.name) for f in fields(source)} == {
        "dataset": "synthetic",
        "data_dir": "",
        "seed": 4,
        "synthetic_users": 30,
        "synthetic_items": 200,
        "synthetic_shape": "default",
        "csv_delimiter": "auto",
        "csv_header": "auto",
        "min_rating": 0.0,
        "min_user_interactions": 2,
        "min_item_interactions": 1,
    }
    assert hash(source) == hash(DataSource.of(small_config(seed=4, learning_rate=0.5)))
    ref = synthetic(30, 200, 4)
    data = dataset_for(config)
    assert np.array_equal(data.item, ref.item) and np.array_equal(data.timestamp, ref.timestamp)


def test_split_is_cached_per_data_source() -> None:
    # Keys that do not select data (a learning rate) share the split; a data key does not.
    assert split_for(small_config()) is split_for(small_config(learning_rate=0.5))
    assert split_for(small_config()) is not split_for(small_config(seed=1))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dataset": "csv", "data_dir": "x", "csv_header": "maybe"}, "csv-header must be one of"),
        ({"dataset": "csv", "data_dir": "x", "csv_delimiter": ""}, "csv-delimiter is empty"),
        ({"csv_delimiter": ";"}, "apply to dataset 'csv' only"),
        ({"dataset": "ml-100k", "data_dir": "x", "csv_header": "no"}, "'ml-100k' has a fixed"),
    ],
)
def test_csv_keys_are_validated(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        small_config(**changes)
