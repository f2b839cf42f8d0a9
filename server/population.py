"""Who the federation's nodes are: the users each one plays, learned once by asking them.

Why: Flower gives a node a fresh random id every run, so sampling over node ids (Flower's
``ClientManager.sample`` draws with the unseeded global ``random``) trains different cohorts in
two runs with one seed, and a node that simulates a shard of users (the cohort engine,
``cohort-size > 1``) cannot be sampled as one device. A simulated node knows its
``partition-id`` (node config); the server asks each node once, with Flower's legacy
get-properties message (``NumPyClient.get_properties``), and from then on samples *users*, in
a fixed order, with a seeded stream (or the user-level DP mechanism's secret one), and sends
each node the users of its shard that were drawn.

Keys: in a simulation a node's users are dense user indices (one per node, or the contiguous
shard ``[p * cohort-size, (p + 1) * cohort-size)`` of node ``p``). A deployed node reports no
partition id, and its key is its node id: deployed sampling stays over node ids (sorted, so a
seeded draw still repeats over one federation), and a deployed server never asks (the devices'
own node configs are theirs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
from flwr.app import Message
from flwr.common import GetPropertiesIns, MessageTypeLegacy, log
from flwr.compat.common.recorddict_compat import (
    getpropertiesins_to_recorddict,
    recorddict_to_getpropertiesres,
)
from flwr.server.client_proxy import ClientProxy

from shared.shards import shard_users
from shared.wire import PARTITION_ID

ASK = MessageTypeLegacy.GET_PROPERTIES  # what NumPyClient.get_properties answers
MAX_ASKS = 3  # a node that never answers is given up on after this many asks
# How long the one-off question may take: every node's ClientApp loads its data to answer it.
DISCOVERY_TIMEOUT_S = 120.0


@dataclass
class Population:
    """The users of every node the server knows; asks only the nodes it has not met."""

    cohort_size: int = 1
    num_users: int = 0  # a simulation's user count (0 for a deployment)
    simulated: bool = True
    partitions: dict[int, int] = field(default_factory=dict)  # node id -> partition id
    deployed_nodes: set[int] = field(default_factory=set)  # met, and reported no partition
    unanswered: dict[int, int] = field(default_factory=dict)  # node id -> times asked in vain

    def learn(self, clients: Iterable[ClientProxy]) -> None:
        """Ask the nodes not met yet for their partition id (simulations only), all at once.

        A node that does not answer is asked again in later rounds, at most ``MAX_ASKS`` times
        in all (each ask may wait ``DISCOVERY_TIMEOUT_S``); until it answers it is not sampled.
        """
        new = [c for c in clients if c.node_id not in self.partitions]
        new = [c for c in new if c.node_id not in self.deployed_nodes]
        new = [c for c in new if self.unanswered.get(c.node_id, 0) < MAX_ASKS]
        if not new:
            return
        if not self.simulated:
            self.deployed_nodes |= {c.node_id for c in new}
            return
        answers = ask_partitions(new)
        for client in new:
            partition = answers.get(client.node_id)
            if partition is None:
                self.unanswered[client.node_id] = self.unanswered.get(client.node_id, 0) + 1
            else:
                self.partitions[client.node_id] = partition
        missing = len(new) - len(answers)
        if missing:
            log(WARNING, "[confide] %d nodes did not say their partition id: not sampled", missing)

    def keys(self, clients: Iterable[ClientProxy]) -> dict[int, int]:
        """Sampling key -> node id for the given (available) nodes: user ids in a simulation,
        node ids in a deployment. Nodes not yet known are left out (they join next round)."""
        out: dict[int, int] = {}
        for client in clients:
            node = client.node_id
            if node in self.partitions:
                for user in self.users_of_partition(self.partitions[node]):
                    out[user] = node
            elif node in self.deployed_nodes:
                out[node] = node
        return out

    def users_of_partition(self, partition: int) -> range:
        if self.cohort_size <= 1:
            return range(partition, partition + 1)  # (a deployment's server knows no users)
        return shard_users(partition, self.cohort_size, self.num_users)

    def by_node(self, keys: Sequence[int], owners: Mapping[int, int]) -> dict[int, list[int]]:
        """The drawn keys grouped by the node that holds them, in key order."""
        grouped: dict[int, list[int]] = {}
        for key in sorted(keys):
            grouped.setdefault(owners[key], []).append(key)
        return grouped


def ask_partitions(clients: Sequence[ClientProxy]) -> dict[int, int]:
    """node id -> partition id, from one get-properties message per node, sent together."""
    grid = clients[0].grid  # Flower's GridClientProxy carries the run's grid
    content = getpropertiesins_to_recorddict(GetPropertiesIns(config={}))
    messages = [Message(content=content, dst_node_id=c.node_id, message_type=ASK) for c in clients]
    answers: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=DISCOVERY_TIMEOUT_S):
        if reply.has_error():
            continue
        properties = recorddict_to_getpropertiesres(reply.content).properties
        partition = properties.get(PARTITION_ID)
        if isinstance(partition, int) and not isinstance(partition, bool) and partition >= 0:
            answers[reply.metadata.src_node_id] = partition
    log(INFO, "[confide] %d of %d nodes said their partition id", len(answers), len(clients))
    return answers


def draw_count(keys: Sequence[int], wanted: int, rng: np.random.Generator) -> list[int]:
    """``wanted`` of ``keys`` uniformly without replacement, in key order (seeded runs repeat)."""
    ordered = sorted(keys)
    if wanted >= len(ordered):
        return ordered
    picked = rng.choice(len(ordered), size=wanted, replace=False)
    return [ordered[i] for i in sorted(picked)]
