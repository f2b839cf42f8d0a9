"""Who is asked to train: Flower's count-based sampling, or user-level DP's Poisson sampling.

One is chosen at setup (:mod:`server.app`). Under user-level DP the count-based sampler would void
the accountant's Poisson assumption, so the Poisson sampler draws itself, with secret randomness
(:mod:`server.user_dp`), accounts every sampled round and stops the run before a round that would
pass the user-level ε cap.
"""

from __future__ import annotations

from logging import WARNING
from typing import Protocol

from flwr.common import log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy

from server.round import RoundState
from server.user_dp import UserDPState
from shared.config import RunConfig


class Sampler(Protocol):
    def sample(self, rnd: RoundState, clients: ClientManager) -> list[ClientProxy]: ...


def available_cohort(clients: ClientManager, wanted: int, min_clients: int) -> list[ClientProxy]:
    """Up to ``wanted`` available clients, at least ``min_clients`` (else none, with a warning)."""
    available = clients.num_available()
    if available < min_clients:
        log(WARNING, "only %d clients available, min-fit-clients is %d", available, min_clients)
        return []
    size = max(min(wanted, available), min_clients)
    return clients.sample(num_clients=size, min_num_clients=size)


class CountSampler:
    """``clients-per-round`` (or ``fraction-fit`` of those available), at most ``max_cohort``."""

    def __init__(self, config: RunConfig, max_cohort: int | None = None) -> None:
        self.config = config
        self.max_cohort = max_cohort  # SecAgg+'s modulus is derived for at most this many

    def sample(self, rnd: RoundState, clients: ClientManager) -> list[ClientProxy]:
        wanted = self.config.clients_per_round or int(
            clients.num_available() * self.config.fraction_fit
        )
        if self.max_cohort is not None and wanted > self.max_cohort:
            log(WARNING, "cohort of %d capped at secagg-max-cohort %d", wanted, self.max_cohort)
            wanted = self.max_cohort
        return available_cohort(clients, wanted, self.config.min_fit_clients)


class PoissonSampler:
    """Each client independently with probability q; the round is accounted when drawn."""

    def __init__(self, config: RunConfig, state: UserDPState) -> None:
        self.config = config
        self.state = state

    def sample(self, rnd: RoundState, clients: ClientManager) -> list[ClientProxy]:
        everyone = list(clients.all().values())
        state = self.state
        state.population = len(everyone)
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
            return []
        chosen = set(dp.sample([c.node_id for c in everyone], rnd.number))
        return [c for c in everyone if c.node_id in chosen]
