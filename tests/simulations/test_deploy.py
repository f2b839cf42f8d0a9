"""Deployment on 127.0.0.1 with real Flower processes: TLS, SuperNode authentication, end to end."""

import json
import os
import secrets
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from client.device import Device
from shared.certs import make_credentials
from simulations.cli import main
from simulations.deploy_local import Deployment
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """One SuperLink (HTTPS + --enable-supernode-auth) with one registered key of two, and
    SuperNodes trying to join it in every way (started together: each takes seconds to start).
    """
    work = tmp_path_factory.mktemp("deploy")
    creds = make_credentials(
        work / "credentials", ["127.0.0.1", "localhost"], ["registered", "stranger"]
    )
    keys = creds.device_keys
    deployment = Deployment(work, creds)
    try:
        deployment.start_superlink()
        deployment.register(["registered"])
        deployment.start_supernode("registered", "", key=keys["registered"])
        deployment.start_supernode("stranger", "", key=keys["stranger"])
        deployment.start_supernode("plain", "", key=None, tls=False, retries=1)
        deployment.start_supernode("plain-auth", "", key=keys["registered"], tls=False, retries=1)
        yield deployment
    finally:
        assert deployment.stop()


def _exit_code(deployment, name, timeout=90):
    process = deployment.processes[name]
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} still running after {timeout}s:\n{deployment.tail(name)}")


def test_registered_key_connects_and_unregistered_key_is_refused(deployment):
    deployment.wait_connected(["registered"])
    assert _exit_code(deployment, "stranger") != 0
    log = deployment.tail("stranger", 60)
    assert "Exit Code: 305" in log and "Failed to activate SuperNode" in log
    assert "SuperNode ID:" not in log
    nodes = json.loads(deployment.flwr("supernode", "list", "--format", "json").stdout)["nodes"]
    assert [n["status"] for n in nodes] == ["online"]  # only the registered one


def test_connections_without_tls_fail(deployment):
    port = deployment.port
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP to the HTTPS port
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        # TLS, but without trusting our CA: the certificate is not accepted
        urllib.request.urlopen(
            f"https://127.0.0.1:{port}/health", timeout=5, context=ssl.create_default_context()
        )
    trusted = ssl.create_default_context(cafile=str(deployment.creds.ca_cert))
    with urllib.request.urlopen(f"https://localhost:{port}/health", context=trusted) as reply:
        assert reply.status == 200  # the SAN covers localhost as well as 127.0.0.1

    assert _exit_code(deployment, "plain") != 0
    assert "Failed to initialize the connection" in deployment.tail("plain", 60)
    # SuperNode authentication over a plain connection is refused outright
    assert _exit_code(deployment, "plain-auth") != 0
    assert "requires a secure TLS connection" in deployment.tail("plain-auth", 60)


@pytest.mark.slow  # 1.5-4 minutes on 2 cores: every round starts a Python process per device
def test_deploy_local_end_to_end(tmp_path):
    work = tmp_path / "work"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "simulations.deploy_local", "--keep", str(work), "--k", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    print(f"deploy_local took {time.monotonic() - started:.0f}s")
    assert result.returncode == 0, result.stderr[-4000:] + result.stdout[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1  # one JSON line
    report = json.loads(lines[0])
    assert report["ok"] and report["status"] == "finished:completed"
    assert report["tls"] and report["supernode_auth"] and report["processes_stopped"]
    assert report["run_config"]["dp-interaction"] is True
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for record in rounds:
        assert record["fit_replies"] == 3 and record["fit_rejected"] == record["fit_failures"] == 0
        # every round under SecAgg+: all 3 devices through every stage, nothing clipped
        assert set(record["secagg_active"].values()) == {3} and record["secagg_survivors"] == 3
        assert record["secagg_clipped_fraction"] == 0.0
    assert rounds[-1]["eval_clients"] == 3

    for device in report["devices"]:
        assert device["epsilon"] > 0 and device["dp_steps"] >= 2  # one DP round each, at least
        items = [item for item, _ in device["recommendations"]]
        assert len(items) == len(set(items)) == 5
        key = bytes.fromhex((work / "keys" / f"{device['name']}.key").read_text())
        with Device.open(work / "devices" / device["name"] / "confide.db", key) as store:
            seen = {i.item for i in store.interactions()}
            assert seen and not seen & set(items)  # only items the device has not seen
            assert len(seen) <= device["interactions"]
            assert store.global_model() is not None and store.private_embedding() is not None
            assert store.privacy_budget().steps == device["dp_steps"]
    for pid in report["pids"].values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_keys_and_certificates_have_safe_permissions(tmp_path):
    creds = make_credentials(tmp_path / "c", ["10.0.0.5", "link.example"], ["a", "b"])
    assert oct(creds.directory.stat().st_mode & 0o777) == "0o700"
    for private in (creds.ca_key, creds.server_key, *creds.device_keys.values()):
        assert oct(private.stat().st_mode & 0o777) == "0o600", private
    assert creds.public_key("a").read_text().startswith("ecdsa-sha2-nistp384 ")
    # run again with one more device: nothing is overwritten, only the new key is created
    again = make_credentials(tmp_path / "c", ["link.example", "10.0.0.5"], ["a", "b", "c"])
    assert [p.name for p in again.created] == ["c", "c.pub"]
    assert secrets.compare_digest(again.ca_key.read_bytes(), creds.ca_key.read_bytes())
    with pytest.raises(ValueError, match="exists for other hosts"):
        make_credentials(tmp_path / "c", ["10.0.0.6"], [])
    # the CLI: bad input is refused before anything is written
    assert main(["certs", str(tmp_path / "d"), "--host", "bad host"]) == 2
    assert not (tmp_path / "d").exists()
    assert main(["certs", str(tmp_path / "d"), "--host", "127.0.0.1", "--devices", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "d" / "devices").iterdir()) == [
        "device-0",
        "device-0.pub",
        "device-1",
        "device-1.pub",
    ]
