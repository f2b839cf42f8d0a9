"""The Flower app directory ``flwr run`` bundles: the source checkout, or one laid out from a wheel.

``flwr run DIR`` zips DIR's pyproject.toml and code into a Flower App Bundle (FAB: ``*.py``,
``*.toml``, ``*.md``, ... without ``__pycache__`` or ``test_*.py``) and the SuperLink runs the
ServerApp and the ClientApps from it, with the defaults of its ``[tool.flwr.app.config]``. A
source checkout is such a directory. A wheel install is not: site-packages holds our packages
among everybody else's and no pyproject.toml of ours. So from a wheel the directory Flower
expects is laid out in a temporary folder, from the pyproject.toml the wheel carries
(:data:`shared.defaults.PACKAGED_PYPROJECT`, the file it was built from) and the installed code
of the apps, and submitted from there: the same FAB a checkout of that version would give, less
the files the apps never import (simulations/, tests/, docs).
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.defaults import CHECKOUT_PYPROJECT, PACKAGED_PYPROJECT, is_installed_wheel

# What the ServerApp (server.app) and the ClientApp (client.app) import: client and server
# import shared and never each other, nor simulations.
APP_PACKAGES = ("shared", "client", "server")
# Flower takes the app's name from its directory and allows only letters, digits and hyphens.
APP_DIR_NAME = "confide"


@contextmanager
def flower_app_dir() -> Iterator[Path]:
    """The directory to hand ``flwr run`` while the block runs (a temporary one from a wheel)."""
    if not is_installed_wheel():
        yield CHECKOUT_PYPROJECT.parent
        return
    with tempfile.TemporaryDirectory(prefix="confide-app-") as tmp:
        yield build_app_dir(Path(tmp) / APP_DIR_NAME)


def build_app_dir(
    target: Path, pyproject: Path = PACKAGED_PYPROJECT, packages: dict[str, Path] | None = None
) -> Path:
    """Lay out a Flower app in ``target`` (which must not exist): pyproject.toml and the apps'
    packages, by default the installed ones. Returns ``target``."""
    sources = packages or {name: installed_package(name) for name in APP_PACKAGES}
    target.mkdir(parents=True)
    shutil.copyfile(pyproject, target / "pyproject.toml")
    for name, source in sources.items():
        shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def installed_package(name: str) -> Path:
    """The directory a package is imported from (found without importing it)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {name!r} is not installed: reinstall confide")
    return Path(next(iter(spec.submodule_search_locations)))
