"""The run configs shipped with confide (``simulations/*.toml``), usable by name anywhere.

They travel in the wheel beside this module, so ``confide simulate --config smoke`` works from
any directory after ``pip install``; in a source checkout ``--config simulations/smoke.toml``
names the same file. A path that exists always wins over a name.

Shipped: ``smoke`` (no privacy), ``smoke-dp`` (both DP units), ``smoke-secagg`` (SecAgg+ with
server-added user-level noise), ``smoke-device-noise`` (SecAgg+ with the user-level noise added
by the devices: docs/design.md §4), ``ml-100k``, ``ml-100k-pooled`` (pooled interaction-level DP).
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent


def shipped() -> list[str]:
    """The names of the shipped configs (file stems), sorted."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.toml"))


def config_path(name_or_path: str) -> Path:
    """The config file ``--config`` names: an existing path, else a shipped config's name.

    Raises FileNotFoundError naming the shipped configs when it is neither.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.parent == Path("."):  # a bare name: "smoke" or "smoke.toml"
        packaged = CONFIG_DIR / f"{path.stem}.toml"
        if path.suffix in ("", ".toml") and packaged.is_file():
            return packaged
    raise FileNotFoundError(
        f"config file {name_or_path} does not exist; the shipped configs, usable by name from "
        f"any directory: {', '.join(shipped())}"
    )
