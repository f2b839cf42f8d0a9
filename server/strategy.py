"""The server strategy: a wrapper that samples, validates and records around a Flower aggregator.

Aggregation itself is Flower's (FedAvg, or FedAdam on the averaged update); this wrapper adds what
Flower's legacy strategies lack: client sampling by count, federated evaluation every few rounds,
validation of every reply (:mod:`server.validation`) and one metrics record per round.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    log,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAdam, FedAvgM, Strategy

from server.validation import InvalidReply, ReplyValidator
from shared.config import RunConfig
from shared.rundir import RunDirectory
from shared.training import METRIC_KEYS


def build_aggregator(config: RunConfig, initial: Parameters) -> Strategy:
    """Flower's aggregation rule chosen by ``strategy``; only its aggregate_fit is used."""
    if config.strategy == "fedadam":
        return FedAdam(
            initial_parameters=initial,
            eta=config.server_learning_rate,
            eta_l=config.learning_rate,
            beta_1=0.9,
            beta_2=0.99,
            tau=config.server_adam_tau,
            fit_metrics_aggregation_fn=_no_metrics,
        )
    # FedAvgM with no momentum is FedAvg with a server learning rate (1.0 = plain FedAvg).
    return FedAvgM(
        initial_parameters=initial,
        server_learning_rate=config.server_learning_rate,
        server_momentum=0.0,
        fit_metrics_aggregation_fn=_no_metrics,
    )


def _no_metrics(_: list) -> dict[str, Scalar]:
    return {}  # the wrapper records the loss itself


class ConfideStrategy(Strategy):
    def __init__(
        self,
        config: RunConfig,
        aggregator: Strategy,
        validator: ReplyValidator,
        initial: Parameters,
        run_dir: RunDirectory,
    ) -> None:
        self.config = config
        self.aggregator = aggregator
        self.validator = validator
        self.initial = initial
        self.run_dir = run_dir
        self.current: list[np.ndarray] = parameters_to_ndarrays(initial)
        self.record: dict[str, Scalar] = {}
        self.started = time.monotonic()

    # -- sampling ---------------------------------------------------------------------------
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.initial

    def _cohort(self, client_manager: ClientManager, wanted: int) -> list[ClientProxy]:
        available = client_manager.num_available()
        if available < self.config.min_fit_clients:
            log(
                WARNING,
                "only %d clients available, min-fit-clients is %d",
                available,
                self.config.min_fit_clients,
            )
            return []
        size = max(min(wanted, available), self.config.min_fit_clients)
        return client_manager.sample(num_clients=size, min_num_clients=size)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self.current = parameters_to_ndarrays(parameters)
        self.record = {"round": server_round}
        self.round_started = time.monotonic()
        available = client_manager.num_available()
        wanted = self.config.clients_per_round or int(available * self.config.fraction_fit)
        cohort = self._cohort(client_manager, wanted)
        self.record["fit_sampled"] = len(cohort)
        if not cohort:
            self.record["skipped"] = "not enough clients available"
        fit_ins = FitIns(parameters, {"server-round": server_round})
        return [(client, fit_ins) for client in cohort]

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        last = server_round == self.config.num_server_rounds
        if server_round % self.config.eval_every and not last:
            self._finish_round()
            return []
        # Intermediate evaluations may sample; the last one ranks for every client.
        wanted = client_manager.num_available()
        if self.config.eval_clients and not last:
            wanted = self.config.eval_clients
        cohort = self._cohort(client_manager, wanted)
        if not cohort:
            self._finish_round()
        eval_ins = EvaluateIns(parameters, {"server-round": server_round})
        return [(client, eval_ins) for client in cohort]

    # -- aggregation ------------------------------------------------------------------------
    def aggregate_fit(self, server_round, results, failures):
        valid: list[tuple[ClientProxy, FitRes]] = []
        for proxy, reply in results:
            try:
                self.validator.check(reply, self.current)
            except InvalidReply as err:
                log(
                    WARNING,
                    "round %d: rejected reply from node %s: %s",
                    server_round,
                    proxy.node_id,
                    err,
                )
                failures = [*failures, err]
                continue
            valid.append((proxy, reply))
        self.record.update(
            fit_replies=len(valid),
            fit_rejected=len(results) - len(valid),
            fit_failures=len(failures),
        )
        for failure in failures:
            if isinstance(failure, BaseException) and not isinstance(failure, InvalidReply):
                log(WARNING, "round %d: client failure: %s", server_round, failure)
        if not valid:
            self.record["skipped"] = "no valid replies: global model unchanged"
            log(WARNING, "round %d: no valid replies, global model unchanged", server_round)
            return None, {}
        losses = [
            (r.num_examples, float(r.metrics["loss"])) for _, r in valid if "loss" in r.metrics
        ]
        if losses:
            weights, values = zip(*losses, strict=True)
            self.record["train_loss"] = float(np.average(values, weights=weights))
        parameters, _ = self.aggregator.aggregate_fit(server_round, valid, failures)
        self.record["fit_seconds"] = round(time.monotonic() - self.round_started, 3)
        return parameters, {}

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        rows = []
        for proxy, reply in results:
            values = [reply.metrics.get(key) for key in METRIC_KEYS]
            if all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in values):
                rows.append((reply.loss, values))
            else:
                log(
                    WARNING,
                    "round %d: rejected evaluation from node %s: metrics %s",
                    server_round,
                    proxy.node_id,
                    reply.metrics,
                )
        self.record.update(
            eval_clients=len(rows), eval_failures=len(failures) + len(results) - len(rows)
        )
        metrics: dict[str, Scalar] = {}
        loss = None
        if rows:
            loss = float(np.mean([r[0] for r in rows]))
            metrics = dict(
                zip(METRIC_KEYS, np.mean([r[1] for r in rows], axis=0).tolist(), strict=True)
            )
            self.record.update(metrics, eval_loss=loss)
        self._finish_round()
        return loss, metrics

    def evaluate(self, server_round: int, parameters: Parameters):
        return None  # no centralized evaluation: the data stays on the devices

    def _finish_round(self) -> None:
        if not self.record:
            return
        now = time.monotonic()
        self.record["round_seconds"] = round(now - self.round_started, 3)
        self.record["elapsed_seconds"] = round(now - self.started, 3)
        self.run_dir.log(self.record)
        log(INFO, "%s", progress_line(self.record, self.config.num_server_rounds))
        self.record = {}


def progress_line(record: dict, total_rounds: int) -> str:
    parts = [f"[confide] round {record['round']}/{total_rounds}"]
    if "skipped" in record:
        parts.append(f"SKIPPED ({record['skipped']})")
    parts.append(f"clients {record.get('fit_replies', 0)}/{record.get('fit_sampled', 0)}")
    if record.get("fit_rejected"):
        parts.append(f"rejected {record['fit_rejected']}")
    if "train_loss" in record:
        parts.append(f"loss {record['train_loss']:.4f}")
    if "hr10" in record:
        parts.append(
            f"HR@10 {record['hr10']:.4f} NDCG@10 {record['ndcg10']:.4f} "
            f"(full {record['full_hr10']:.4f}/{record['full_ndcg10']:.4f})"
        )
    parts.append(f"{record['round_seconds']:.1f}s")
    return " | ".join(parts)
