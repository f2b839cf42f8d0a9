"""The device agent over real gRPC (loopback), fuzzed: any request, built from device.proto or
raw bytes (wrong wire types, truncated, invalid UTF-8), gets one of the status codes the API
promises (docs/design.md §2) and changes the store only when it succeeds and is meant to."""

from __future__ import annotations

import math
import secrets
import time

import grpc
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from client.device import Device
from client.proto import device_pb2 as pb
from client.service import SERVICE, AgentClient, serve
from shared.models import build_model, global_arrays
from tests.conftest import small_config

NUM_ITEMS = 50
PROMISED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}
METHODS = [m.name for m in pb.DESCRIPTOR.services_by_name["DeviceAgent"].methods]
CHANGES = {"Record", "DeleteInteraction", "Forget"}
INT64 = st.integers(-(2**63), 2**63 - 1)
DOUBLES = st.one_of(
    st.floats(), st.sampled_from([0.0, 1.7e9, 1.7e12, -1.0, 2**63, math.nan, math.inf])
)


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    """One device with a global model, served on loopback for the whole module."""
    path = tmp_path_factory.mktemp("agent") / "device.db"
    device = Device.open(path, secrets.token_bytes(32), num_items=NUM_ITEMS)
    _give_model(device)
    server, address = serve(device, "127.0.0.1:0")
    client = AgentClient(address, timeout=30)
    yield client, device
    client.close()
    server.stop(grace=None).wait()
    device.close()


def _give_model(device: Device) -> None:
    config = small_config(num_items=NUM_ITEMS, embedding_dim=4, mlp_layers="8,4")
    model = build_model(config.model, 1, NUM_ITEMS, dim=4, mlp_layers=(8, 4), seed=0)
    device.save_global(config, global_arrays(model))


def snapshot(device: Device) -> tuple:
    """What a client can change: the interactions, and the state records (caches aside)."""
    interactions = tuple(device.interactions())
    names = tuple(n for n in device.store.names() if n not in ("secret", "serving-embedding"))
    return interactions, names, tuple(device.store.get(n) for n in names)


def _call(client: AgentClient, method: str, request, device: Device) -> grpc.StatusCode:
    try:
        getattr(client.stub, method)(request, timeout=30)
    except grpc.RpcError as err:
        _check_error(err, method, device)
        return err.code()
    return grpc.StatusCode.OK


def _check_error(err: grpc.RpcError, method: str, device: Device) -> None:
    assert err.code() in PROMISED, (method, err.code(), err.details())
    details = err.details()
    assert details and len(details) < 400, details
    assert str(device.store.path) not in details and str(device.store.path.parent) not in details


def _reset_if_full(device: Device) -> None:
    if len(device.interactions()) > 200 or not device.global_model():
        device.forget(device.device_id)
        _give_model(device)


@given(method=st.sampled_from(METHODS), data=st.binary(max_size=40))
@example(method="Record", data=b"\x08")  # was INTERNAL: a truncated varint
@example(method="Forget", data=b"\x12\x02\xff\xfe")  # was INTERNAL: device_id not UTF-8
@example(method="Record", data=b"\x0a\x03abc")  # item sent as bytes: not an item
@example(method="Forget", data=b"\x08\x01")  # the old bool confirm=true: refused
def test_raw_bytes_get_promised_codes_and_no_state_change(agent, method, data):
    client, device = agent
    _reset_if_full(device)
    before = snapshot(device)
    channel_call = client.channel.unary_unary(f"/{SERVICE}/{method}")
    try:
        channel_call(data, timeout=30)
        code = grpc.StatusCode.OK
    except grpc.RpcError as err:
        _check_error(err, method, device)
        code = err.code()
    after = snapshot(device)
    if code != grpc.StatusCode.OK or method not in CHANGES:
        assert after == before, (method, data, code)
    elif method == "Record":
        assert after[0][:-1] == before[0] and len(after[0]) == len(before[0]) + 1
    elif method == "DeleteInteraction":
        assert set(after[0]) < set(before[0]) and len(after[0]) == len(before[0]) - 1


@given(
    item=st.one_of(st.none(), st.integers(0, NUM_ITEMS + 5), INT64),
    rating=st.one_of(st.none(), DOUBLES),
    timestamp=st.one_of(st.none(), DOUBLES, st.floats(0, 1.7e9)),
)
@example(item=2**63 - 1, rating=None, timestamp=None)  # outside the catalogue
@example(item=3, rating=None, timestamp=1.7e12)  # milliseconds
def test_record_codes_match_the_sdk_contract(agent, item, rating, timestamp):
    client, device = agent
    _reset_if_full(device)
    before = snapshot(device)
    request = pb.RecordRequest(item=item, rating=rating, timestamp=timestamp)
    code = _call(client, "Record", request, device)
    valid = (
        item is not None
        and 0 <= item < NUM_ITEMS
        and (rating is None or math.isfinite(rating))
        and (timestamp is None or 0 <= timestamp <= time.time() + 86_400)
    )
    assert (code == grpc.StatusCode.OK) == valid, (item, rating, timestamp, code)
    after = snapshot(device)
    if valid:
        new = after[0][-1]
        assert (new.item, new.rating) == (item, rating) and after[0][:-1] == before[0]
    else:
        assert code == grpc.StatusCode.INVALID_ARGUMENT and after == before


@given(
    record_id=st.one_of(INT64, st.integers(0, 300)),
    k=st.integers(-(2**31), 2**31 - 1),
    device_id=st.one_of(st.text(max_size=40), st.just("")),
)
def test_delete_recommend_forget_codes_and_no_state_change(agent, record_id, k, device_id):
    client, device = agent
    _reset_if_full(device)
    before = snapshot(device)
    ids = {i.record_id for i in before[0]}
    code = _call(
        client, "DeleteInteraction", pb.DeleteInteractionRequest(record_id=record_id), device
    )
    assert code == (grpc.StatusCode.OK if record_id in ids else grpc.StatusCode.NOT_FOUND)
    if code != grpc.StatusCode.OK:
        assert snapshot(device) == before
    before = snapshot(device)
    code = _call(client, "Recommend", pb.RecommendRequest(k=k), device)
    assert code == (grpc.StatusCode.OK if k >= 1 else grpc.StatusCode.INVALID_ARGUMENT)
    assert snapshot(device) == before
    wrong = device_id != device.device_id
    code = _call(client, "Forget", pb.ForgetRequest(device_id=device_id), device)
    assert code == (grpc.StatusCode.INVALID_ARGUMENT if wrong else grpc.StatusCode.OK)
    assert snapshot(device) == before
    for method, request in (
        ("GetStatus", pb.StatusRequest()),
        ("GetPrivacyBudget", pb.PrivacyBudgetRequest()),
        ("ListInteractions", pb.ListInteractionsRequest()),
        ("Verify", pb.VerifyRequest()),
    ):
        assert _call(client, method, request, device) == grpc.StatusCode.OK
    assert snapshot(device) == before
    assert client.serving()
