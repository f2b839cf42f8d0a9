"""A finished run read back: its own values win, keys added since it was made take defaults."""

import json

import numpy as np
import pytest

from shared.defaults import default_values
from shared.models import global_arrays, global_names
from shared.saved_run import load_run
from shared.split import split_for
from tests.conftest import small_config


def test_old_run_reads_back_with_new_keys_defaulted(tmp_path):
    config = small_config(model="mf", seed=5)
    saved = config.to_mapping()
    del saved["learning-rate-floor"]  # a key this run predates
    saved["retired-key"] = 1  # a key since removed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    model = config.build_model(split_for(config).num_items)
    arrays = global_arrays(model)
    np.savez(tmp_path / "global_model.npz", **dict(zip(global_names(model), arrays, strict=True)))

    loaded, loaded_arrays = load_run(tmp_path)
    assert loaded == config.replace(learning_rate_floor=default_values()["learning-rate-floor"])
    assert (loaded.model, loaded.seed) == ("mf", 5)
    assert all(np.array_equal(a, b) for a, b in zip(loaded_arrays, arrays, strict=True))


def test_a_directory_without_a_model_is_no_finished_run(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="is not a finished run"):
        load_run(tmp_path)
