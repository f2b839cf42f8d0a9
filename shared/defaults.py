"""Where the run defaults live, in a source checkout and in an installed wheel.

The single source of defaults is the ``[tool.flwr.app.config]`` table of the project's
pyproject.toml: ``flwr run .`` reads it there. A wheel carries that same file as package data
(``shared/app.toml``, put there by hatch's ``force-include`` when the wheel is built), so an
installed ``confide`` reads the exact table the wheel was built from: no second copy to drift.

Standard library only: a device SDK or the CLI can ask for the defaults without importing torch.
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any

# In a wheel: the project's pyproject.toml, copied in at build time (see [tool.hatch...]).
PACKAGED_PYPROJECT = Path(__file__).resolve().with_name("app.toml")
# In a source checkout (or an editable install of one): the project's own pyproject.toml.
CHECKOUT_PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def pyproject_defaults(pyproject: Path) -> dict[str, Any]:
    """The ``[tool.flwr.app.config]`` table of one pyproject.toml."""
    with pyproject.open("rb") as fh:
        return dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


def app_pyproject() -> Path:
    """The project's pyproject.toml: the copy an installed wheel carries, else the checkout's.

    The packaged copy wins because it exists only in a wheel install, where the directory above
    the packages is site-packages and holds no pyproject.toml of ours.
    """
    for path in (PACKAGED_PYPROJECT, CHECKOUT_PYPROJECT):
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"confide's defaults are missing: neither {PACKAGED_PYPROJECT} (a wheel install) nor "
        f"{CHECKOUT_PYPROJECT} (a source checkout) exists; reinstall confide (pip install .)"
    )


def is_installed_wheel() -> bool:
    """Whether these packages came from a wheel (no source checkout around them)."""
    return PACKAGED_PYPROJECT.is_file()


def default_values() -> dict[str, Any]:
    """Every config key with its default, kebab-case as in pyproject.toml (a fresh dict)."""
    return dict(_defaults(app_pyproject()))


@cache
def _defaults(path: Path) -> dict[str, Any]:
    return pyproject_defaults(path)
