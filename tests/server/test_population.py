"""Who the nodes are, and who is drawn: users in a fixed order, whatever ids the nodes got."""

import numpy as np

from server.population import Population, draw_count
from server.round import RoundState
from server.sampling import CountSampler, evaluation_cohort
from shared.shards import shard_count, shard_users
from tests.client.test_app import task_identity  # noqa: F401  (autouse: Flower's run id)
from tests.conftest import small_config


class Proxy:
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id


class Clients:
    """Flower's ClientManager as the samplers use it (keyed by str cid, as Flower does)."""

    def __init__(self, node_ids) -> None:
        self.clients = {str(n): Proxy(n) for n in node_ids}

    def all(self):
        return dict(self.clients)


def _known(population: Population, partitions: dict[int, int]) -> Population:
    population.partitions.update(partitions)  # what ask_partitions would have learned
    return population


def test_shards_are_contiguous_and_cover_every_user_once():
    users = [u for p in range(shard_count(43, 8)) for u in shard_users(p, 8, 43)]
    assert users == list(range(43))
    assert shard_count(43, 8) == 6 and list(shard_users(5, 8, 43)) == [40, 41, 42]
    assert shard_count(43, 1) == 43 and list(shard_users(7, 1, 43)) == [7]


def test_the_same_seed_draws_the_same_users_whatever_the_node_ids():
    """Two runs, two sets of random node ids, one seed: the same users train each round."""
    config = small_config(clients_per_round=5)
    draws = []
    for node_ids in ([11, 95, 3, 40, 77, 58, 62, 19], [900, 12, 555, 31, 7, 480, 66, 201]):
        population = _known(Population(), {n: p for p, n in enumerate(node_ids)})
        sampler = CountSampler(config, population)
        cohort = sampler.sample(RoundState(number=3, run_started=0.0), Clients(node_ids))
        partition_of = population.partitions
        draws.append(sorted(partition_of[n] for n in cohort.users))
        assert cohort.size == 5 and all(len(u) == 1 for u in cohort.users.values())
    assert draws[0] == draws[1]
    other_round = CountSampler(config, population).sample(
        RoundState(number=4, run_started=0.0), Clients(node_ids)
    )
    assert sorted(population.partitions[n] for n in other_round.users) != draws[1]


def test_a_shard_node_is_told_only_its_drawn_users():
    config = small_config(clients_per_round=10, cohort_size=4)
    population = _known(Population(cohort_size=4, num_users=30), {500 + p: p for p in range(8)})
    cohort = CountSampler(config, population).sample(
        RoundState(number=1, run_started=0.0), Clients(range(500, 508))
    )
    assert cohort.size == 10
    for node, users in cohort.users.items():
        assert set(users) <= set(shard_users(node - 500, 4, 30)) and users == sorted(users)
    every = evaluation_cohort(config, population, Clients(range(500, 508)), 1, last=True)
    assert every.size == 30 and len(every.users) == 8  # the last evaluation ranks every user


def test_a_deployment_samples_its_node_ids_and_never_asks():
    population = Population(simulated=False)
    clients = Clients([42, 7, 19])
    population.learn(clients.all().values())  # would fail if it sent a message (no grid)
    assert population.keys(clients.all().values()) == {42: 42, 7: 7, 19: 19}


def test_nodes_not_known_yet_are_left_out_until_they_answer():
    population = _known(Population(), {1: 0, 2: 1})  # node 3 has not said its partition yet
    assert population.keys([Proxy(1), Proxy(2), Proxy(3)]) == {0: 1, 1: 2}


def test_draw_count_is_uniform_without_replacement():
    rng = np.random.default_rng(0)
    counts = np.zeros(10)
    for _ in range(4000):
        picked = draw_count(list(range(10)), 3, rng)
        assert len(set(picked)) == 3 and picked == sorted(picked)
        counts[picked] += 1
    np.testing.assert_allclose(counts / 4000, 0.3, atol=0.03)
    assert draw_count([5, 1, 3], 7, rng) == [1, 3, 5]


class AnsweringGrid:
    """A grid whose nodes answer the partition question as simulated ClientApps do (with real
    Flower messages); ``silent`` nodes never answer."""

    def __init__(self, partitions: dict[int, int], silent=()) -> None:
        self.partitions, self.silent, self.asked = partitions, set(silent), []

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.app import Message
        from flwr.common import Code, GetPropertiesRes, Status
        from flwr.compat.common.recorddict_compat import getpropertiesres_to_recorddict

        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.asked.append(node)
            if node in self.silent:
                continue
            res = GetPropertiesRes(Status(Code.OK, ""), {"partition-id": self.partitions[node]})
            replies.append(Message(getpropertiesres_to_recorddict(res), reply_to=msg))
        return replies


def test_nodes_say_their_partition_once_and_a_silent_one_is_given_up_on():
    grid = AnsweringGrid({10: 0, 20: 1, 30: 2}, silent={30})
    proxies = [Proxy(n) for n in (10, 20, 30)]
    for p in proxies:
        p.grid = grid
    population = Population()
    for _ in range(5):
        population.learn(proxies)
    assert population.partitions == {10: 0, 20: 1}
    assert grid.asked.count(10) == 1 and grid.asked.count(30) == 3  # MAX_ASKS
    assert population.keys(proxies) == {0: 10, 1: 20}
