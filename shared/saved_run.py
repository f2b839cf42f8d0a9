"""A finished run read back: its config and its final global model.

The audit, the diagnostics and the probes all start from a run directory that ``confide
simulate`` or ``confide centralized`` wrote (config.json and global_model.npz, see
:mod:`shared.rundir`). Runs outlive the code that made them, so keys added since a run was made
take their defaults, while every value the run recorded wins.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shared.config import RunConfig
from shared.models import global_names
from shared.rundir import CONFIG_FILE, MODEL_FILE
from shared.split import split_for


def load_run(run_dir: Path) -> tuple[RunConfig, list[np.ndarray]]:
    """A finished run's config and final global model (its arrays in the model's order)."""
    config_path, model_path = run_dir / CONFIG_FILE, run_dir / MODEL_FILE
    if not (config_path.exists() and model_path.exists()):
        raise FileNotFoundError(
            f"{run_dir} is not a finished run: it needs {CONFIG_FILE} and {MODEL_FILE}"
        )
    config = RunConfig.from_saved(json.loads(config_path.read_text()))
    names = global_names(config.build_model(split_for(config).num_items))
    with np.load(model_path) as arrays:
        return config, [arrays[name] for name in names]
