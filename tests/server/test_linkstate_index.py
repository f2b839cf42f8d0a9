"""The indexed link-state lookup answers exactly what Flower's scan answers."""

import threading
from types import SimpleNamespace

import numpy as np
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

from server import linkstate_index


class FakeState:
    """What ``get_message_ins`` touches of an InMemoryLinkState: the store, the lock, and the
    validation, which deletes messages marked expired (as Flower's deletes expired ones)."""

    def __init__(self) -> None:
        self.message_ins_store: dict[str, SimpleNamespace] = {}
        self.lock = threading.RLock()
        self.expired: set[str] = set()

    def _check_stored_messages(self, message_ids: set[str]) -> None:
        for msg_id in message_ids & self.expired:
            self.message_ins_store.pop(msg_id, None)


def _message(node: int) -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(dst_node_id=node, delivered_at=""))


def test_the_index_gives_the_scans_answers_through_inserts_deliveries_deletes_and_expiry():
    flower, ours = FakeState(), FakeState()
    rng = np.random.default_rng(0)
    nodes, next_id, asks = list(range(12)), 0, 0
    for _ in range(3000):
        op = rng.random()
        if op < 0.3:  # the server pushes a message
            node, msg_id = int(rng.choice(nodes)), f"m{next_id}"
            next_id += 1
            for state in (flower, ours):
                state.message_ins_store[msg_id] = _message(node)
        elif op < 0.4 and flower.message_ins_store:  # a reply was pulled: its message goes
            msg_id = str(rng.choice(list(flower.message_ins_store)))
            for state in (flower, ours):
                state.message_ins_store.pop(msg_id, None)
        elif op < 0.45 and flower.message_ins_store:  # a message expires
            msg_id = str(rng.choice(list(flower.message_ins_store)))
            flower.expired.add(msg_id)
            ours.expired.add(msg_id)
        else:  # the delivery loop asks for one node's next message
            node = int(rng.choice(nodes))
            got_flower = InMemoryLinkState.get_message_ins(flower, node, 1)
            got_ours = linkstate_index.get_message_ins(ours, node, 1)
            assert _keys(flower, got_flower) == _keys(ours, got_ours)
            asks += len(got_ours)
    assert asks > 300  # the sequence did deliver
    delivered = {k for k, m in ours.message_ins_store.items() if m.metadata.delivered_at}
    live = {k for k in delivered if k not in ours.expired}
    assert (
        live
        == {k for k, m in flower.message_ins_store.items() if m.metadata.delivered_at}
        - flower.expired
    )


def _keys(state: FakeState, messages) -> list[str]:
    by_object = {id(m): k for k, m in state.message_ins_store.items()}
    return [by_object[id(m)] for m in messages]


def test_other_asks_go_to_flowers_own_method_and_install_is_idempotent():
    state = FakeState()
    for msg_id, node in (("a", 1), ("b", 1), ("c", 2)):
        state.message_ins_store[msg_id] = _message(node)
    both = linkstate_index.get_message_ins(state, 1, None)  # all of node 1's: Flower's scan
    assert [m.metadata.dst_node_id for m in both] == [1, 1]
    assert linkstate_index.install() and linkstate_index.install()
    assert InMemoryLinkState.get_message_ins is linkstate_index.get_message_ins


def test_benchmarks_can_ask_for_flowers_own_scan(monkeypatch):
    monkeypatch.setattr(
        InMemoryLinkState, "get_message_ins", linkstate_index._flower_get_message_ins
    )
    monkeypatch.setenv(linkstate_index.USE_FLOWER_SCAN, "1")
    assert not linkstate_index.install()
    assert InMemoryLinkState.get_message_ins is linkstate_index._flower_get_message_ins
    monkeypatch.setenv(linkstate_index.USE_FLOWER_SCAN, "0")
    assert linkstate_index.install()
