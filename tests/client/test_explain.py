"""Explanations on the device: the pure ranking, Device.explain, and the agent's Explain RPC."""

import math
import secrets
import socket

import grpc
import numpy as np
import pytest
import torch

from client.device import Device, ModelNotReady, NoInteractions
from client.explain import SIMILAR_ITEM, Explanation, explain
from client.proto import device_pb2 as pb
from client.service import AgentClient, serve
from shared.models import build_model, global_arrays
from tests.conftest import small_config

NUM_ITEMS = 50
ROOT2 = 1 / math.sqrt(2)


def test_explain_ranks_own_items_by_cosine_hand_computed():
    vectors = np.zeros((6, 2))
    vectors[0] = [1, 0]  # the item explained
    vectors[1] = [ROOT2, ROOT2]  # cos 0.7071
    vectors[2] = [0, 1]  # cos 0
    vectors[3] = [-1, 0]  # cos -1
    vectors[4] = [1, 0]  # cos 1, but not the device's
    vectors[5] = [ROOT2, ROOT2]  # ties with 1: the smaller id first
    got = explain(vectors, 0, [3, 2, 1, 5, 1, 0], k=3)
    assert got == [
        Explanation(1, pytest.approx(ROOT2), SIMILAR_ITEM),
        Explanation(5, pytest.approx(ROOT2), SIMILAR_ITEM),
        Explanation(2, pytest.approx(0.0), SIMILAR_ITEM),
    ]
    assert [e.item for e in explain(vectors, 0, [3, 2, 1, 5, 0], k=10)] == [1, 5, 2, 3]
    assert explain(vectors, 0, [0], k=3) == []  # an item never explains itself


def _mf_global(config, rows):
    """An MF global model whose item table has the given rows (the rest: random)."""
    model = build_model("mf", 1, NUM_ITEMS, dim=config.embedding_dim, seed=0)
    with torch.no_grad():
        table = model.item_embedding.weight
        for item, row in rows.items():
            table[item] = torch.zeros(config.embedding_dim)
            table[item, : len(row)] = torch.tensor(row)
    return global_arrays(model)


@pytest.fixture
def device(tmp_path):
    with Device.open(tmp_path / "device.db", secrets.token_bytes(32)) as device:
        yield device


def _with_model(device):
    config = small_config(num_items=NUM_ITEMS, model="mf")
    rows = {10: [1, 0], 4: [2, 0], 9: [1, 1], 11: [0, 3], 20: [-1, 0], 30: [1, 0], 31: [5, 0]}
    device.save_global(config, _mf_global(config, rows))
    for t, item in enumerate([9, 4, 20, 11, 20, 10]):  # 30 and 31 (cos 1) are not the device's
        device.record(item, timestamp=float(t))


def test_device_explains_with_its_own_items_only(device, monkeypatch):
    _with_model(device)

    def no_network(*args, **kwargs):
        raise AssertionError("explain opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)  # nothing is sent anywhere
    stored = {name: device.store.get(name) for name in device.store.names()}
    got = device.explain(10, k=3)
    assert [(e.item, e.evidence) for e in got] == [
        (4, SIMILAR_ITEM),
        (9, SIMILAR_ITEM),
        (11, SIMILAR_ITEM),
    ]
    assert [e.score for e in got] == pytest.approx([1.0, ROOT2, 0.0])
    everything = device.explain(10, k=NUM_ITEMS)
    own = {i.item for i in device.interactions()}
    assert [e.item for e in everything] == [4, 9, 11, 20] and {e.item for e in everything} <= own
    # an item the device never interacted with can be explained (a recommendation is one)
    assert [e.item for e in device.explain(30, k=1)] == [4]
    assert {name: device.store.get(name) for name in device.store.names()} == stored  # no writes


def test_explain_errors_say_what_to_do(device):
    with pytest.raises(ModelNotReady, match="no global model on this device yet"):
        device.explain(3)
    config = small_config(num_items=NUM_ITEMS, model="mf")
    device.save_global(config, _mf_global(config, {}))
    with pytest.raises(NoInteractions, match="record interactions first"):
        device.explain(3)
    device.record(3, timestamp=1.0)
    with pytest.raises(NoInteractions, match="no past items other than 3"):
        device.explain(3)
    for bad, message in [
        (NUM_ITEMS, r"outside the catalogue: use an index in 0\.\.49"),
        (-1, "outside the catalogue"),
        ("3", "integer catalogue index"),
    ]:
        with pytest.raises(ValueError, match=message):
            device.explain(bad)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        device.explain(3, k=0)


@pytest.mark.parametrize("model", ["gmf", "neumf"])
def test_every_model_family_has_item_vectors_to_explain_with(device, model):
    config = small_config(num_items=NUM_ITEMS, model=model)
    built = build_model(
        model, 1, NUM_ITEMS, dim=config.embedding_dim, mlp_layers=config.layers, seed=0
    )
    device.save_global(config, global_arrays(built))
    for item in (1, 2, 3):
        device.record(item, timestamp=float(item))
    got = device.explain(7, k=5)
    assert sorted(e.item for e in got) == [1, 2, 3]
    assert all(-1 - 1e-9 <= e.score <= 1 + 1e-9 for e in got)


def test_explain_rpc_end_to_end_with_status_codes(device, tmp_path):
    server, address = serve(device, f"unix:{tmp_path / 'agent.sock'}")
    try:
        with AgentClient(address) as client:
            code = _code(lambda: client.explain(10))
            assert code[0] == grpc.StatusCode.FAILED_PRECONDITION and "no global model" in code[1]
            _with_model(device)
            assert client.explain(10, k=3) == device.explain(10, k=3)
            assert [e.item for e in client.explain(10, k=3)] == [4, 9, 11]
            code = _code(lambda: client.stub.Explain(pb.ExplainRequest(k=3)))  # no item
            assert code[0] == grpc.StatusCode.INVALID_ARGUMENT and "item is required" in code[1]
            code = _code(lambda: client.explain(NUM_ITEMS))
            assert (
                code[0] == grpc.StatusCode.INVALID_ARGUMENT and "outside the catalogue" in code[1]
            )
            code = _code(lambda: client.explain(10, k=0))
            assert code[0] == grpc.StatusCode.INVALID_ARGUMENT and "k must be" in code[1]
            client.forget(device.device_id)
            code = _code(lambda: client.explain(10))
            assert code[0] == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        server.stop(grace=None).wait()


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()
