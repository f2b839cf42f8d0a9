"""confide installs like a package: a wheel carries its defaults (the very table `flwr run .`
reads) and its run configs, an installed confide hands Flower an app built from the installed
code, and `confide --help` imports nothing heavy."""

import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from shared.defaults import CHECKOUT_PYPROJECT, default_values, is_installed_wheel
from simulations.app_bundle import APP_PACKAGES, flower_app_dir
from simulations.configs import CONFIG_DIR, config_path, shipped
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this checkout, built as `pip install .` builds it (seconds, offline)."""
    try:
        import hatchling  # noqa: F401  (the build backend, from the test extra)
    except ImportError:
        pytest.fail("hatchling is not installed: pip install -e '.[test]'")
    out = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*build, "--wheel-dir", str(out), str(ROOT)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return next(out.glob("confide-*.whl"))


def test_wheel_carries_the_table_flwr_run_reads(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        packaged = archive.read("shared/app.toml")
    # the exact pyproject.toml the wheel was built from: one source, no copy kept by hand
    assert packaged == (ROOT / "pyproject.toml").read_bytes()
    table = tomllib.loads(packaged.decode())["tool"]["flwr"]["app"]["config"]
    assert table == default_values()
    assert {f"simulations/{name}.toml" for name in shipped()} <= names
    assert {"server/app.py", "client/app.py", "simulations/research/audit.py"} <= names
    assert not any(name.startswith("tests/") for name in names)


# Run in a fresh interpreter whose only confide is the unpacked wheel, outside the checkout.
INSTALLED_PROBE = """
import json, sys, zipfile
from flwr.cli.build import build_fab_from_disk
from shared.defaults import PACKAGED_PYPROJECT, default_values, is_installed_wheel
from simulations.app_bundle import flower_app_dir
import simulations.cli
light = not any(m in sys.modules for m in ("torch", "flwr.server", "shared.config"))
with flower_app_dir() as app:
    fab = build_fab_from_disk(app)
    app_name = app.name
import io, tomllib
with zipfile.ZipFile(io.BytesIO(fab)) as archive:
    files = archive.namelist()
    fab_config = tomllib.loads(archive.read("pyproject.toml").decode())
print(json.dumps({
    "packaged": str(PACKAGED_PYPROJECT), "installed": is_installed_wheel(),
    "defaults": default_values(), "app_name": app_name, "app_gone": not app.exists(),
    "files": files, "fab_config": fab_config["tool"]["flwr"]["app"]["config"],
}))
"""


def test_installed_wheel_reads_packaged_defaults_and_bundles_the_apps(wheel, tmp_path):
    site = tmp_path / "site-packages"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    probe = subprocess.run(
        [sys.executable, "-c", INSTALLED_PROBE],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen = json.loads(probe.stdout.splitlines()[-1])
    assert seen["installed"] and seen["packaged"] == str(site / "shared" / "app.toml")
    assert seen["defaults"] == default_values()  # read from the wheel's own copy
    # the FAB Flower would run: the apps' code, and the defaults table as `flwr run .` sends it
    assert seen["app_name"] == "confide" and seen["app_gone"]
    assert {"server/app.py", "client/app.py", "shared/config.py"} <= set(seen["files"])
    assert {f.split("/")[0] for f in seen["files"] if "/" in f} <= {*APP_PACKAGES, ".info"}
    assert seen["fab_config"] == default_values()


def test_confide_help_imports_nothing_heavy():
    probe = (
        "import sys, simulations.cli; print(sorted({'torch', 'flwr', 'numpy'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_in_a_checkout_flower_bundles_the_checkout():
    assert not is_installed_wheel() and CHECKOUT_PYPROJECT == ROOT / "pyproject.toml"
    with flower_app_dir() as app:
        assert app == ROOT


def test_config_names_a_shipped_file_or_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: simulations/smoke.toml is not here
    assert {"smoke", "smoke-dp", "smoke-secagg", "smoke-device-noise", "ml-100k"} <= set(shipped())
    assert config_path("smoke") == config_path("smoke.toml") == CONFIG_DIR / "smoke.toml"
    own = tmp_path / "smoke.toml"
    own.write_text("seed = 3\n")
    assert config_path("smoke.toml") == Path("smoke.toml")  # a file that exists wins
    with pytest.raises(FileNotFoundError, match="shipped configs.*smoke-dp"):
        config_path("simulations/smoke.toml")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        config_path("nope")
