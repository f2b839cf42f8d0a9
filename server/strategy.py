"""The server strategy: Flower's hooks, orchestrating a :class:`~server.pipeline.Pipeline`.

Flower calls configure_fit / aggregate_fit / configure_evaluate / aggregate_evaluate; each asks the
sampler and the pipeline's steps (listed in :mod:`server.app`) and does nothing of its own beyond
timing and federated evaluation every few rounds. Every mechanism (validation, SecAgg+ checks,
user-level noise, the server optimizer, the records) is a step; the global model lives in the
server optimizer's :class:`~server.optimizers.ModelState` only.
"""

from __future__ import annotations

import time
from logging import WARNING

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    Parameters,
    Scalar,
    log,
    ndarrays_to_parameters,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from server.evaluation import Catalogue, summarize_evaluation
from server.optimizers import ModelState
from server.pipeline import Pipeline
from server.population import Population
from server.provenance import model_digest
from server.round import Reply, RoundState, SkipRound
from server.sampling import Cohort, Sampler, evaluation_cohort
from server.shard_replies import expand_shard_evaluations
from server.steps import SecAggSum
from shared.config import RunConfig
from shared.wire import SERVER_ROUND, SHARD_USERS


class ConfideStrategy(Strategy):
    """The hooks; ``rounds_done`` > 0 resumes a run: Flower's round r is the run's round
    ``rounds_done + r`` everywhere it matters (the ``server-round`` devices get, which drives their
    learning-rate decay and seed streams; evaluation cadence and the last round; the records).
    """

    def __init__(
        self,
        config: RunConfig,
        sampler: Sampler,
        pipeline: Pipeline,
        model: ModelState,
        rounds_done: int = 0,
        catalogue: Catalogue | None = None,
        population: Population | None = None,
    ) -> None:
        self.config = config
        self.sampler = sampler
        self.population = population or Population(simulated=False)
        self.pipeline = pipeline
        self.model = model  # the server optimizer's, read here to send it
        self.rounds_done = rounds_done
        self.catalogue = catalogue  # for the top-10 lists' coverage, Gini and novelty
        self.started = time.monotonic()
        self.round: RoundState | None = None  # the round in progress
        self.eval_asked = 0  # users asked to evaluate in the evaluation in progress

    def run_round(self, flower_round: int) -> int:
        """The run's round number of Flower's ``flower_round`` (they differ after a resume)."""
        return self.rounds_done + flower_round

    def begin_round(self, server_round: int) -> RoundState:
        self.round = RoundState(number=server_round, run_started=self.started)
        return self.round

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters(self.model.arrays)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        server_round = self.run_round(server_round)
        rnd = self.begin_round(server_round)
        cohort = self.sampler.sample(rnd, client_manager)
        rnd.note(fit_sampled=cohort.size)
        rnd.asked = {node: tuple(users) for node, users in cohort.users.items()}
        config: dict[str, Scalar] = {SERVER_ROUND: server_round} | self.pipeline.instructions(rnd)
        self.pipeline.on_sampled(rnd, cohort.nodes)
        if rnd.record.skipped is not None:
            return []
        if not cohort.size and rnd.record.stopped is None:
            rnd.note(skipped="no clients sampled")
        # parameters: Flower's copy of self.model, already serialized once for every node
        return self.instructions(cohort, lambda cfg: FitIns(parameters, cfg), config)

    def instructions(self, cohort: Cohort, make, config: dict[str, Scalar]) -> list:
        """One instruction per drawn node; a node that simulates a shard is told which of its
        users were drawn (the others sit the round out)."""
        if self.config.cohort_size <= 1:
            same = make(config)
            return [(client, same) for client in cohort.nodes]
        return [
            (cohort.proxies[node], make(config | {SHARD_USERS: encode_users(users)}))
            for node, users in cohort.users.items()
        ]

    def secagg_stage(self, stage: str, active: int, halt: str | None) -> None:
        """Called by the SecAgg+ workflow after each stage; a halted round leaves the model."""
        self.pipeline.find(SecAggSum).stage(self.round, stage, active, halt)

    def aggregate_fit(self, server_round, results, failures):
        server_round = self.run_round(server_round)
        rnd = self.round
        rnd.failures = list(failures)
        replies = [Reply(node_id=proxy.node_id, res=res) for proxy, res in results]
        try:
            self.pipeline.fit(rnd, replies)
        except SkipRound as skip:
            rnd.note(skipped=f"{skip}: global model unchanged")
            log(WARNING, "round %d: %s, global model unchanged", server_round, skip)
            return None, {}
        rnd.note(fit_seconds=round(time.monotonic() - rnd.started, 3))
        return ndarrays_to_parameters(self.model.arrays), {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        server_round = self.run_round(server_round)
        if self.round is not None:
            # Proof that a skipped round left the model byte for byte as it was.
            self.round.note(model_sha256=model_digest(self.model.arrays))
        last = server_round == self.config.num_server_rounds
        if server_round % self.config.eval_every and not last:
            self._finish_round()
            return []
        # Intermediate evaluations may sample; the last one ranks for every client.
        cohort = evaluation_cohort(self.config, self.population, client_manager, server_round, last)
        if not cohort.size:
            self._finish_round()
        self.eval_asked = cohort.size  # a device that never answers is a failure too
        config: dict[str, Scalar] = {SERVER_ROUND: server_round}
        return self.instructions(cohort, lambda cfg: EvaluateIns(parameters, cfg), config)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        server_round = self.run_round(server_round)
        if self.config.cohort_size > 1:  # a shard's reply holds each of its users' results
            results, failures = expand_shard_evaluations(results, failures)
        loss, metrics, fields = summarize_evaluation(
            server_round, results, failures, self.catalogue, asked=self.eval_asked
        )
        if self.round is not None:
            self.round.note(**fields)
        self._finish_round()
        return loss, metrics

    def evaluate(self, server_round: int, parameters: Parameters):
        return None  # no centralized evaluation: the data stays on the devices

    def _finish_round(self) -> None:
        if self.round is None:
            return
        self.pipeline.finish(self.round)
        self.round = None


def encode_users(users: list[int]) -> bytes:
    """A shard's drawn users as Flower config can carry them (int64 bytes, ascending)."""
    return np.asarray(users, dtype=np.int64).tobytes()
