"""The device agent as a host app in another language sees it: a Node.js client (@grpc/grpc-js)
built only from client/proto/device.proto talks to a running ``python -m client.service``.

It needs ``node`` and the JS client's packages (``npm ci --prefix tests/agent_js``; .ci/run does
it). Without node it skips, saying so; with node but without the packages it fails.
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time

import pytest

from client.device import Device
from client.service import AgentClient
from shared.models import build_model, global_arrays
from tests.client.test_store import damage_page_header
from tests.conftest import ROOT, small_config

NODE = shutil.which("node")
JS = ROOT / "tests" / "agent_js"
NUM_ITEMS = 200

pytestmark = pytest.mark.skipif(
    NODE is None, reason="node (Node.js) is not installed: the JS client of the agent needs it"
)


@pytest.fixture
def agent_address(tmp_path):
    """A real agent process over a store with a global model; yields its Unix socket address.

    The store is at ``tmp_path / "data" / "device.db"``.
    """
    key_file, store = tmp_path / "keys" / "k", tmp_path / "data" / "device.db"
    key_file.parent.mkdir()
    key = secrets.token_bytes(32)
    key_file.write_text(key.hex())
    os.chmod(key_file, 0o600)
    config = small_config(num_items=NUM_ITEMS)
    model = build_model(
        config.model, 1, NUM_ITEMS, dim=config.embedding_dim, mlp_layers=config.layers, seed=0
    )
    with Device.open(store, key) as device:
        device.save_global(config, global_arrays(model))
    socket = tmp_path / "agent.sock"
    command = [sys.executable, "-m", "client.service", "--store", str(store)]
    command += ["--key-file", str(key_file), "--listen", f"unix:{socket}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    agent = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = agent.stdout.readline()  # printed once it listens
        assert "listening on" in line, f"the agent did not start: {line!r}"
        yield f"unix:{socket}"
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()


def _node(address: str, *mode: str, env: dict[str, str] | None = None) -> dict:
    """Run the JS client against the agent; its replies and status codes, by step."""
    assert (JS / "node_modules" / "@grpc" / "grpc-js").is_dir(), (
        "the JS client's packages are missing: npm ci --prefix tests/agent_js"
    )
    script = [NODE, str(JS / "check.js"), address, str(ROOT / "client/proto/device.proto"), *mode]
    done = subprocess.run(
        script,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_nodejs_client_built_from_the_proto(agent_address):
    out = _node(agent_address)

    assert out["health"] == {"code": "OK", "reply": {"status": "SERVING"}}
    status = out["status"]["reply"]
    assert status["num_items"] == str(NUM_ITEMS) and status["has_global_model"]
    device_id = status["device_id"]

    assert out["huge_item"]["code"] == "INVALID_ARGUMENT"
    assert "outside the catalogue: use an index in 0..199" in out["huge_item"]["details"]
    assert out["milliseconds"]["code"] == "INVALID_ARGUMENT"
    assert "looks like milliseconds" in out["milliseconds"]["details"]
    assert [r["reply"]["record_id"] for r in out["records"]] == ["1", "2", "3"]
    listed = out["listed"]["reply"]["interactions"]
    assert [(i["item"], i["rating"]) for i in listed] == [("3", 4), ("5", 4), ("8", 4)]
    assert all(abs(i["timestamp"] - time.time()) < 3600 for i in listed)  # seconds, not ms
    assert out["deleted"] == {"code": "OK", "reply": {"interactions": "2"}}
    assert out["deleted_again"]["code"] == "NOT_FOUND"

    for refused in (out["forget_old_field"], out["forget_typo"]):  # nothing wiped by accident
        assert refused["code"] == "INVALID_ARGUMENT"
        assert "send this device's id (device_id, from Status)" in refused["details"]
        assert "forget()" not in refused["details"]
    budget = out["budget"]["reply"]
    assert budget["epsilon"] == 0 and budget["cap_source"] == "" and budget["delta"] == 1e-5
    assert out["verify"] == {"code": "OK", "reply": {"records": "4"}}  # 2 interactions + 2 state
    items = [int(r["item"]) for r in out["recommend"]["reply"]["items"]]
    assert len(items) == 3 and not {5, 8} & set(items)
    reasons = out["explain"]["reply"]["reasons"]  # only the device's own items (3 was deleted)
    assert sorted(r["item"] for r in reasons) == ["5", "8"]
    assert {r["evidence"] for r in reasons} == {"item-similarity"}
    assert reasons[0]["score"] >= reasons[1]["score"]
    assert out["explain_no_item"]["code"] == "INVALID_ARGUMENT"
    assert "item is required" in out["explain_no_item"]["details"]

    assert out["forget"]["code"] == "OK"
    after = out["after"]["reply"]
    assert after["device_id"] == device_id and after["interactions"] == "0"
    assert not after["has_global_model"]


def test_a_nodejs_client_sees_structural_damage_as_data_loss(agent_address, tmp_path):
    """One header of SQLite's own (not a record) changed under the running agent."""
    store = tmp_path / "data" / "device.db"
    status = _node(agent_address)["status"]["reply"]  # fills the store, then forgets
    with AgentClient(agent_address) as client:
        for t in range(3):
            client.record(t, timestamp=float(t))
    damage_page_header(store)
    out = _node(agent_address, "damaged", env={"CONFIDE_DEVICE_ID": status["device_id"]})
    for step in ("status", "verify"):
        assert out[step]["code"] == "DATA_LOSS", out[step]
        assert "the store file is damaged" in out[step]["details"]
        assert str(store) not in out[step]["details"]
    assert out["health"]["reply"]["status"] == "NOT_SERVING"
    assert out["forget_typo"]["code"] == "INVALID_ARGUMENT"
    assert out["forget"]["code"] == "OK"  # the way out: the file starts again, same device id
    after = out["after"]["reply"]
    assert after["interactions"] == "0" and after["device_id"] == status["device_id"]
    assert out["health_after"]["reply"]["status"] == "SERVING"
