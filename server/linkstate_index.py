"""Flower 1.42's in-memory link state, asked by destination instead of scanned, in simulations.

Why: the simulation engine's delivery loop (``add_messages_to_queue`` in Flower's
``fleet/vce/vce_api.py``) asks the link state every 0.1 s for one undelivered message per node,
for every node of the federation, and ``InMemoryLinkState.get_message_ins`` answers each ask by
scanning every stored message and validating each one again. With N nodes and M messages in
flight that is N × M validations per tick, all under the lock that the server's pulls and the
devices' replies need as well. On ML-100K (943 nodes; 100 messages in flight in a training
round, 943 in the last evaluation) the simulation process kept a core busy the whole run,
ahead of the niced Ray actors that do the devices' work, and the last evaluation took ten
minutes.

:func:`install` replaces that one method with one that answers the same question from an index
of the stored messages by destination, rebuilt whenever the stored message ids change,
and validates only the asking node's messages. The answer is the same: the first (in storage
order) undelivered message for the node, marked delivered with the same timestamp format, after
the same validation of it. Calls of any other shape (more than one message, a run filter) go to
Flower's own method. Messages of other nodes are validated when those nodes ask (every node
asks every tick) rather than on every node's ask. Installed by the ServerApp, which Flower's
simulation runs in the process that holds the link state; only for the Flower version it was
written against, so a Flower upgrade falls back to Flower's own code until it is checked again.
"""

from __future__ import annotations

import os
from logging import INFO

import flwr
from flwr.common import log
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.date import now

CHECKED_FLOWER = "1.42.0"
# Benchmarks only: set to 1 to measure Flower's own scan (simulations/research/bench_linkstate.py).
USE_FLOWER_SCAN = "CONFIDE_FLOWER_SCAN"
_flower_get_message_ins = InMemoryLinkState.get_message_ins


def get_message_ins(self, node_id: int, limit: int | None, *, run_id: int | None = None):
    """``InMemoryLinkState.get_message_ins`` for the delivery loop's ask, by index."""
    if limit != 1 or run_id is not None:
        return _flower_get_message_ins(self, node_id, limit, run_id=run_id)
    with self.lock:
        for msg_id in _by_destination(self).get(node_id, ()):
            self._check_stored_messages({msg_id})  # may delete it (expired, left the federation)
            message = self.message_ins_store.get(msg_id)
            if message is not None and message.metadata.delivered_at == "":
                message.metadata.delivered_at = now().isoformat()
                return [message]
    return []


def _by_destination(state) -> dict[int, list[str]]:
    """Stored message ids by destination node, in storage order, rebuilt when they change.

    The fingerprint of the stored ids is their count and the newest id: message ids are unique
    (fresh UUIDs) and a dict keeps insertion order, so any insert changes the newest id and any
    delete the count (or, with an insert, the newest id). O(1) per ask, O(M) per change.
    """
    store = state.message_ins_store
    fingerprint = (len(store), next(reversed(store), None))
    if getattr(state, "_confide_fingerprint", None) != fingerprint:
        index: dict[int, list[str]] = {}
        for msg_id, message in store.items():
            index.setdefault(message.metadata.dst_node_id, []).append(msg_id)
        state._confide_fingerprint = fingerprint
        state._confide_index = index
    return state._confide_index


def install() -> bool:
    """Use the indexed lookup (once; only on the checked Flower version). True if in use."""
    if InMemoryLinkState.get_message_ins is get_message_ins:
        return True
    if os.environ.get(USE_FLOWER_SCAN) == "1":
        return False
    if flwr.__version__ != CHECKED_FLOWER:
        log(INFO, "[confide] Flower %s: link-state index not installed", flwr.__version__)
        return False
    InMemoryLinkState.get_message_ins = get_message_ins
    return True
