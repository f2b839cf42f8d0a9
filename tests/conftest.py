"""Shared test helpers: the project's default config with small synthetic data."""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from shared.config import RunConfig
from shared.defaults import default_values

ROOT = Path(__file__).resolve().parents[1]
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"

# Hypothesis profiles for the fuzz tests (tests/fuzz/, docs/design.md §5): the default keeps
# them within ~60 s of CI; `pytest tests/fuzz --hypothesis-profile=long` searches deeper.
# No deadline: one example may open a store or start a server, and timing asserts do not belong
# in tests. Stateful tests take their step counts from here too.
_FUZZ = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("fuzz", max_examples=60, stateful_step_count=20, **_FUZZ)
settings.register_profile("long", max_examples=2000, stateful_step_count=50, **_FUZZ)
settings.load_profile("fuzz")


def small_config(**changes) -> RunConfig:
    values = default_values()
    values.update(
        {"synthetic-users": 30, "synthetic-items": 200, "embedding-dim": 8, "mlp-layers": "16,8"}
    )
    values.update({k.replace("_", "-"): v for k, v in changes.items()})
    return RunConfig.from_mapping(values)


@pytest.fixture
def config() -> RunConfig:
    return small_config()


def run_confide(*args: str, settings: dict | None = None, timeout: int = 420) -> tuple[int, str]:
    """Run the `confide` CLI in a fresh process from the project root; (exit code, output)."""
    import subprocess
    import sys

    sets = [part for k, v in (settings or {}).items() for part in ("--set", f"{k}={v}")]
    result = subprocess.run(
        [sys.executable, "-m", "simulations.cli", *args, *sets],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result.returncode, result.stdout + result.stderr


def read_jsonl(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
