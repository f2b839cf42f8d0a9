"""Shared test helpers: the project's default config with small synthetic data."""

from pathlib import Path

import pytest

from shared.config import RunConfig, pyproject_defaults

ROOT = Path(__file__).resolve().parents[1]
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"


def small_config(**changes) -> RunConfig:
    values = pyproject_defaults(ROOT / "pyproject.toml")
    values.update(
        {"synthetic-users": 30, "synthetic-items": 200, "embedding-dim": 8, "mlp-layers": "16,8"}
    )
    values.update({k.replace("_", "-"): v for k, v in changes.items()})
    return RunConfig.from_mapping(values)


@pytest.fixture
def config() -> RunConfig:
    return small_config()
