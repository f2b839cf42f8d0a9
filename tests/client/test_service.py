"""The device agent's gRPC service: round trip over a Unix socket and loopback, error codes."""

import os
import secrets
import sqlite3
import time

import grpc
import pytest

from client.device import Device
from client.policy import DevicePolicy
from client.proto import device_pb2 as pb
from client.service import AgentClient, check_address, main, serve
from client.store import CorruptStoreError
from shared.models import build_model, global_arrays
from tests.client.test_store import damage_page_header
from tests.conftest import small_config

NUM_ITEMS = 200


@pytest.fixture
def agent(tmp_path):
    """A device with a global model, served on a Unix socket; yields (client, device)."""
    device = Device.open(tmp_path / "device.db", secrets.token_bytes(32), num_items=NUM_ITEMS)
    config = small_config(num_items=NUM_ITEMS)
    model = build_model(
        config.model, 1, NUM_ITEMS, dim=config.embedding_dim, mlp_layers=config.layers, seed=0
    )
    device.save_global(config, global_arrays(model))
    server, address = serve(device, f"unix:{tmp_path / 'agent.sock'}")
    client = AgentClient(address)
    yield client, device
    client.close()
    server.stop(grace=None).wait()
    device.close()


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_round_trip(agent, tmp_path):
    client, device = agent
    assert oct(os.stat(tmp_path / "agent.sock").st_mode & 0o777) == "0o600"
    assert client.record(7, rating=4.5, timestamp=100.0) == 1
    assert client.record(9) == 2
    assert [(i.item, i.rating) for i in device.interactions()] == [(7, 4.5), (9, None)]
    status = client.status()
    assert status["interactions"] == 2 and status["device_id"] == device.device_id
    assert status["has_global_model"] and status["num_items"] == NUM_ITEMS

    top = client.recommend(5)
    assert top == device.recommend(5)  # the same answer as the SDK in-process
    assert len(top) == 5 and not {7, 9} & {r.item for r in top}

    budget = client.privacy_budget()
    assert budget.epsilon == 0.0 and budget.steps == 0 and budget.cap is None
    assert budget.unit == "one interaction of this device" and budget.delta == 1e-5

    client.forget(status["device_id"])
    assert client.status()["interactions"] == 0 and not client.status()["has_global_model"]


def test_bad_arguments_get_status_codes_with_clear_messages(agent):
    client, _ = agent
    code, details = _code(lambda: client.stub.Record(pb.RecordRequest()))  # no item
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "item is required" in details
    code, details = _code(lambda: client.record(NUM_ITEMS))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "outside the catalogue" in details
    code, details = _code(lambda: client.record(3, rating=float("nan")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "rating must be a finite" in details
    code, details = _code(lambda: client.recommend(0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "k must be a positive integer" in details
    for wrong in ("", "no", "true"):
        code, details = _code(lambda w=wrong: client.forget(w))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "send this device's id" in details
    assert client.status()["has_global_model"]  # the refused forget changed nothing


def test_missing_model_and_tampering_have_their_own_codes(tmp_path):
    device = Device.open(tmp_path / "d.db", secrets.token_bytes(32))
    device.record(3, timestamp=1.0)
    server, address = serve(device, "127.0.0.1:0")
    try:
        with AgentClient(address) as client:
            code, details = _code(lambda: client.recommend(3))
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "no global model" in details
            config = small_config(num_items=NUM_ITEMS)
            model = build_model(config.model, 1, NUM_ITEMS, dim=8, mlp_layers=config.layers)
            device.save_global(config, global_arrays(model))
            with sqlite3.connect(tmp_path / "d.db") as db:
                db.execute("UPDATE interactions SET id = 5 WHERE id = 1")
            code, details = _code(lambda: client.recommend(3))
            assert code == grpc.StatusCode.DATA_LOSS and "interactions/5" in details
    finally:
        server.stop(grace=None).wait()
        device.close()


def test_only_local_addresses_are_served():
    for address in ("unix:/tmp/a.sock", "127.0.0.1:5000", "localhost:0", "[::1]:7000"):
        assert check_address(address) == address
    for address, message in [
        ("0.0.0.0:5000", "refusing to listen on 0.0.0.0"),
        ("192.168.1.4:5000", "refusing to listen"),
        ("unix:relative.sock", "must be absolute"),
        ("127.0.0.1", "unix:/path or 127.0.0.1:PORT"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_address(address)


def test_agent_command_refuses_a_public_address(tmp_path):
    key = tmp_path / "keys" / "k"
    key.parent.mkdir()
    key.write_text(secrets.token_hex(32))
    os.chmod(key, 0o600)
    store = str(tmp_path / "data" / "d.db")
    assert main(["--store", store, "--key-file", str(key), "--listen", "0.0.0.0:7000"]) == 2
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_listing_deleting_and_verifying_interactions(agent):
    client, device = agent
    assert client.serving() and client.serving("")  # grpc.health.v1
    first = client.record(7, rating=4.5, timestamp=100.0)
    client.record(9, timestamp=200.0)
    assert client.interactions() == device.interactions()
    assert [(i.item, i.rating) for i in client.interactions()] == [(7, 4.5), (9, None)]
    assert client.delete_interaction(first) == 1
    code, details = _code(lambda: client.delete_interaction(first))
    assert code == grpc.StatusCode.NOT_FOUND and f"record id {first}" in details
    assert client.verify() == 1 + len(device.store.names())
    code, details = _code(lambda: client.record(3, timestamp=time.time() * 1000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "milliseconds" in details
    code, details = _code(lambda: client.record(2**63 - 1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "outside the catalogue" in details


def test_status_reports_the_cap_and_what_is_left(agent):
    client, device = agent
    status = client.status()
    assert status["epsilon_cap"] is None and status["epsilon_remaining"] is None
    assert status["cap_source"] == "" and status["delta"] == 1e-5
    device.save_policy(DevicePolicy(epsilon_cap=8.0, delta=1e-6))
    status, budget = client.status(), client.privacy_budget()
    assert (status["epsilon_cap"], status["epsilon_remaining"], status["delta"]) == (8.0, 8.0, 1e-6)
    assert status["cap_source"] == "device" and budget == device.privacy_budget()


def test_structural_damage_is_data_loss_and_forget_recovers(agent, tmp_path):
    client, device = agent
    for t in range(3):
        client.record(t, timestamp=float(t))
    damage_page_header(tmp_path / "device.db")
    for call in (client.status, client.interactions, client.verify):
        code, details = _code(call)
        assert code == grpc.StatusCode.DATA_LOSS and "the store file is damaged" in details
        assert str(tmp_path) not in details and "forget()" not in details
    assert not client.serving()
    client.forget(device.device_id)
    assert client.serving() and client.status()["interactions"] == 0


def test_a_store_too_damaged_to_open_answers_data_loss(tmp_path):
    key = secrets.token_bytes(32)
    with Device.open(tmp_path / "d.db", key) as device:
        device.record(1, timestamp=1.0)
    damage_page_header(tmp_path / "d.db")
    with pytest.raises(CorruptStoreError) as info:
        Device.open(tmp_path / "d.db", key)
    server, address = serve(None, "127.0.0.1:0", damage=f"damaged: {info.value.detail}")
    try:
        with AgentClient(address) as client:
            assert not client.serving()
            code, details = _code(client.status)
            assert code == grpc.StatusCode.DATA_LOSS and details.startswith("damaged: SQLite")
    finally:
        server.stop(grace=None).wait()
