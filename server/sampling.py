"""Who is asked to train: a seeded count of users, or user-level DP's Poisson sampling.

One is chosen at setup (:mod:`server.app`). Both draw *users* (a simulation's dense user ids; a
deployment's node ids) in a fixed order (:mod:`server.population`: why not Flower's
``ClientManager.sample``), so one seed trains the same cohorts in every run, whether a node plays
one user or a shard of them. Under user-level DP the count-based sampler would void the
accountant's Poisson assumption, so the Poisson sampler draws itself, with secret randomness
(:mod:`server.user_dp`), accounts every sampled round and stops the run before a round that would
pass the user-level ε cap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from logging import WARNING
from typing import Protocol

import numpy as np
from flwr.common import log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy

from server.population import Population, draw_count
from server.round import RoundState
from server.user_dp import UserDPState
from shared.config import RunConfig
from shared.streams import Stream, generator

EVALUATE = 1  # the cohort stream's second id: an evaluation's draw, apart from the round's fit


@dataclass(frozen=True)
class Cohort:
    """The drawn users and the nodes that hold them: ``users[node]`` are that node's draws."""

    proxies: Mapping[int, ClientProxy] = field(default_factory=dict)
    users: Mapping[int, list[int]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Users drawn (devices, one per node, unless nodes simulate shards)."""
        return sum(len(u) for u in self.users.values())

    @property
    def nodes(self) -> list[ClientProxy]:
        return [self.proxies[n] for n in self.users]


EMPTY = Cohort()


class Sampler(Protocol):
    def sample(self, rnd: RoundState, clients: ClientManager) -> Cohort: ...


def cohort_of(
    population: Population, clients: ClientManager, chosen: list[int], owners: Mapping[int, int]
) -> Cohort:
    proxies = {c.node_id: c for c in clients.all().values()}  # (Flower keys them by str cid)
    return Cohort(proxies=proxies, users=population.by_node(chosen, owners))


def known_users(population: Population, clients: ClientManager) -> dict[int, int]:
    """Sampling key -> node id for every available node, asking the new ones who they are."""
    available = list(clients.all().values())
    population.learn(available)
    return population.keys(available)


def count_cohort(
    population: Population,
    clients: ClientManager,
    owners: Mapping[int, int],
    wanted: int,
    min_clients: int,
    rng: np.random.Generator,
) -> Cohort:
    """Up to ``wanted`` of the known users (``owners``: key -> node, from :func:`known_users`),
    at least ``min_clients`` (else none, with a warning)."""
    if len(owners) < min_clients:
        log(WARNING, "only %d clients available, min-fit-clients is %d", len(owners), min_clients)
        return EMPTY
    size = max(min(wanted, len(owners)), min_clients)
    return cohort_of(population, clients, draw_count(list(owners), size, rng), owners)


class CountSampler:
    """``clients-per-round`` (or ``fraction-fit`` of those available), at most ``max_cohort``.

    Seeded by the run's seed and the round: no guarantee rests on which users a round without
    user-level DP asks (the server chooses them in plain sight anyway).
    """

    def __init__(
        self, config: RunConfig, population: Population, max_cohort: int | None = None
    ) -> None:
        self.config = config
        self.population = population
        self.max_cohort = max_cohort  # SecAgg+'s modulus is derived for at most this many

    def sample(self, rnd: RoundState, clients: ClientManager) -> Cohort:
        owners = known_users(self.population, clients)
        wanted = self.config.clients_per_round or int(len(owners) * self.config.fraction_fit)
        if self.max_cohort is not None and wanted > self.max_cohort:
            log(WARNING, "cohort of %d capped at secagg-max-cohort %d", wanted, self.max_cohort)
            wanted = self.max_cohort
        rng = generator(self.config.seed, Stream.COHORT_SAMPLING, rnd.number)
        min_clients = self.config.min_fit_clients
        return count_cohort(self.population, clients, owners, wanted, min_clients, rng)


class PoissonSampler:
    """Each user independently with probability q; the round is accounted when drawn."""

    def __init__(self, config: RunConfig, state: UserDPState, population: Population) -> None:
        self.config = config
        self.state = state
        self.population = population

    def sample(self, rnd: RoundState, clients: ClientManager) -> Cohort:
        owners = known_users(self.population, clients)
        state = self.state
        state.population = len(owners)
        if state.mechanism is None:
            state.mechanism = state.create(self.config)  # server or device noise
        dp = state.mechanism
        if state.stopped is None and dp.would_pass_cap(state.population):
            state.stopped = (
                f"user-level epsilon cap {self.config.dp_user_epsilon_cap:g} reached "
                f"(epsilon {dp.epsilon():.3g} after {dp.history.steps} rounds)"
            )
            log(WARNING, "[confide] run stopped: %s", state.stopped)
        if state.stopped is not None:
            rnd.note(stopped=state.stopped)
            return EMPTY
        return cohort_of(self.population, clients, dp.sample(list(owners), rnd.number), owners)


def evaluation_cohort(
    config: RunConfig,
    population: Population,
    clients: ClientManager,
    server_round: int,
    last: bool,
) -> Cohort:
    """Who evaluates: every known user at the last round, else ``eval-clients`` of them (seeded)."""
    owners = known_users(population, clients)
    wanted = config.eval_clients if config.eval_clients and not last else len(owners)
    rng = generator(config.seed, Stream.COHORT_SAMPLING, server_round, EVALUATE)
    return count_cohort(population, clients, owners, wanted, config.min_fit_clients, rng)
