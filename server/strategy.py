"""The server strategy: a wrapper that samples, validates and records around a Flower aggregator.

Aggregation itself is Flower's (FedAvg, or FedAdam on the averaged update); this wrapper adds what
Flower's legacy strategies lack: client sampling by count, federated evaluation every few rounds,
validation of every reply (:mod:`server.validation`) and one metrics record per round.
"""

from __future__ import annotations

import hashlib
import time
from importlib import metadata
from logging import INFO, WARNING

import numpy as np
from flwr.common import (
    Code,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    Status,
    log,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAdam, FedAvgM, Strategy
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from server.aggregation import ItemSumFedAvg
from server.secagg import clipped_fraction, unmasked_mean
from server.user_dp import UserLevelDP
from server.validation import InvalidReply, ReplyValidator
from shared.config import RunConfig
from shared.privacy import BUDGET_EXHAUSTED
from shared.rundir import RunDirectory
from shared.secagg import BOUND_KEY
from shared.training import METRIC_KEYS


def build_aggregator(config: RunConfig, initial: Parameters, names: list[str]) -> Strategy:
    """The aggregation rule chosen by ``strategy``; only its aggregate_fit is used."""
    if config.strategy == "itemsum":
        return ItemSumFedAvg(
            initial_parameters=initial,
            names=names,
            server_learning_rate=config.server_learning_rate,
            server_momentum=config.server_momentum,
        )
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
    # FedAvgM with no momentum and rate 1.0 is plain FedAvg.
    return FedAvgM(
        initial_parameters=initial,
        server_learning_rate=config.server_learning_rate,
        server_momentum=config.server_momentum,
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
        self.round_started = self.started
        self.user_dp: UserLevelDP | None = None
        self.population = 0
        self.stopped: str | None = None
        self.device_epsilons: list[float] = []
        self.device_sigmas: list[float] = []  # σ of the devices that trained this round
        self.nodes_at_cap: set[int] = set()  # distinct devices that declined, whole run
        self.secagg = config.secagg_plan()  # None without SecAgg+

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

    def _fit_cohort(self, client_manager: ClientManager) -> list[ClientProxy]:
        wanted = self.config.clients_per_round or int(
            client_manager.num_available() * self.config.fraction_fit
        )
        if self.secagg is not None and wanted > self.secagg.max_cohort:
            # The modulus is derived for at most max_cohort devices: never sample more.
            log(
                WARNING,
                "cohort of %d capped at secagg-max-cohort %d",
                wanted,
                self.secagg.max_cohort,
            )
            wanted = self.secagg.max_cohort
        return self._cohort(client_manager, wanted)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self.current = parameters_to_ndarrays(parameters)
        self.record = {"round": server_round}
        self.round_started = time.monotonic()
        config: dict[str, Scalar] = {"server-round": server_round}
        if self.config.dp_user:
            cohort = self._user_dp_cohort(server_round, client_manager)
            config[KEY_CLIPPING_NORM] = self.config.dp_user_clip_norm
        else:
            cohort = self._fit_cohort(client_manager)
        self.record["fit_sampled"] = len(cohort)
        if self.secagg is not None:
            config[BOUND_KEY] = self.secagg.bound
            if len(cohort) > self.secagg.max_cohort:  # Poisson sampling drew too many
                self.record["skipped"] = (
                    f"{len(cohort)} devices sampled, more than secagg-max-cohort "
                    f"{self.secagg.max_cohort} that the SecAgg+ modulus allows"
                )
                log(WARNING, "round %d skipped: %s", server_round, self.record["skipped"])
                return []
        if not cohort and "stopped" not in self.record:
            self.record["skipped"] = "no clients sampled"
        fit_ins = FitIns(parameters, config)
        return [(client, fit_ins) for client in cohort]

    def _user_dp_cohort(
        self, server_round: int, client_manager: ClientManager
    ) -> list[ClientProxy]:
        clients = list(client_manager.all().values())
        self.population = len(clients)
        if self.user_dp is None:
            self.user_dp = UserLevelDP.from_config(self.config, self.population)
        if self.stopped is None and self.user_dp.would_pass_cap(self.population):
            self.stopped = (
                f"user-level epsilon cap {self.config.dp_user_epsilon_cap:g} reached "
                f"(epsilon {self.user_dp.epsilon():.3g} after {self.user_dp.history.steps} rounds)"
            )
            log(WARNING, "[confide] run stopped: %s", self.stopped)
        if self.stopped is not None:
            self.record["stopped"] = self.stopped
            return []
        chosen = set(self.user_dp.sample([c.node_id for c in clients], server_round))
        return [c for c in clients if c.node_id in chosen]

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        if self.record:
            # Proof that a skipped round left the model byte for byte as it was.
            self.record["model_sha256"] = model_digest(parameters_to_ndarrays(parameters))
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
    def secagg_stage(self, stage: str, active: int, halt: str | None) -> None:
        """Called by the SecAgg+ workflow after each stage; a halted round leaves the model."""
        if "skipped" in self.record or "stopped" in self.record:
            return  # already explained (nothing sampled, too many sampled, run stopped)
        self.record.setdefault("secagg_active", {})[stage] = active
        self.record["fit_failures"] = self.record.get("fit_sampled", 0) - active
        if halt is not None:
            self.record["skipped"] = f"{halt}: global model unchanged"
            log(WARNING, "round %s: %s", self.record.get("round"), self.record["skipped"])

    def aggregate_fit(self, server_round, results, failures):
        if self.secagg is not None:
            return self._aggregate_secagg(server_round, results, failures)
        valid: list[tuple[ClientProxy, FitRes, list[np.ndarray]]] = []
        for proxy, reply in results:
            try:
                arrays = self.validator.check(reply, self.current)
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
            valid.append((proxy, reply, arrays))
        for failure in failures:
            if isinstance(failure, BaseException) and not isinstance(failure, InvalidReply):
                log(WARNING, "round %d: client failure: %s", server_round, failure)
        # A device at its privacy budget declines to train: counted, never aggregated.
        trained = [v for v in valid if v[1].metrics.get("dp_status") != BUDGET_EXHAUSTED]
        self.record.update(
            fit_replies=len(valid),
            fit_rejected=len(results) - len(valid),
            fit_failures=len(failures),
            budget_exhausted=len(valid) - len(trained),
        )
        self._note_devices([(proxy, reply) for proxy, reply, _ in valid])
        if not trained:
            return self._skip(server_round, "no valid trained replies")
        self._note_loss([reply for _, reply, _ in trained])
        if self.user_dp is not None:
            trained = [self._noised_average(server_round, trained)]
        parameters, _ = self.aggregator.aggregate_fit(
            server_round, [(proxy, reply) for proxy, reply, _ in trained], failures
        )
        self.record["fit_seconds"] = round(time.monotonic() - self.round_started, 3)
        return parameters, {}

    def _note_devices(self, replies: list[tuple[ClientProxy, FitRes]]) -> None:
        # A device's reported ε is only recorded, never trusted for anything else; junk is dropped.
        self.device_epsilons = _reported(replies, "dp_epsilon")
        self.device_sigmas = _reported(
            [(p, r) for p, r in replies if r.metrics.get("dp_status") != BUDGET_EXHAUSTED],
            "dp_noise_multiplier",
        )
        self.nodes_at_cap |= {
            proxy.node_id for proxy, r in replies if r.metrics.get("dp_status") == BUDGET_EXHAUSTED
        }

    def _note_loss(self, trained: list[FitRes]) -> None:
        losses = [
            (r.num_examples, float(r.metrics["loss"])) for r in trained if "loss" in r.metrics
        ]
        if losses:
            weights, values = zip(*losses, strict=True)
            self.record["train_loss"] = float(np.average(values, weights=weights))

    def _skip(self, server_round: int, reason: str) -> tuple[None, dict]:
        self.record["skipped"] = f"{reason}: global model unchanged"
        log(WARNING, "round %d: %s, global model unchanged", server_round, reason)
        return None, {}

    def _aggregate_secagg(self, server_round, results, failures):
        """SecAgg+: every result carries the same unmasked mean of the devices' clipped updates.

        Nothing per device can be validated (the server never sees an update); the aggregate is
        checked instead. A device at its DP budget sent a zero update that is in the sum, so the
        sum is divided by the devices that trained (or, under user-level DP, noised and divided
        by the fixed q N): the same rule as without SecAgg+.
        """
        contributors = len(results)
        self._note_devices(results)
        trained = [r for _, r in results if r.metrics.get("dp_status") != BUDGET_EXHAUSTED]
        self.record.update(
            fit_replies=contributors,
            fit_rejected=0,
            budget_exhausted=contributors - len(trained),
            secagg_survivors=contributors,
            secagg_dropped=self.record.get("fit_sampled", 0) - contributors,
        )
        try:
            mean = unmasked_mean(results, [a.shape for a in self.current], self.secagg)
            self.record["secagg_clipped_fraction"] = clipped_fraction(
                results, sum(a.size for a in self.current)
            )
        except InvalidReply as err:
            return self._skip(server_round, f"SecAgg+ aggregate rejected: {err}")
        if self.record["secagg_clipped_fraction"] > 0:
            log(WARNING, "round %d: the SecAgg+ quantizer clipped coordinates", server_round)
        if not trained:
            return self._skip(server_round, "no device trained")
        self._note_loss(trained)
        total = [m * contributors for m in mean]
        if self.user_dp is not None:
            update = self.user_dp.aggregate_sum(total, self.population, server_round)
            cohort = self.user_dp.sample_rate(self.population) * self.population
        else:
            update = [t / len(trained) for t in total]
            cohort = len(trained)
        proxy, reply, _ = self._synthetic(results[0][0], update, cohort)
        parameters, _ = self.aggregator.aggregate_fit(server_round, [(proxy, reply)], failures)
        self.record["fit_seconds"] = round(time.monotonic() - self.round_started, 3)
        return parameters, {}

    def _synthetic(self, proxy: ClientProxy, average: list[np.ndarray], cohort: float) -> tuple:
        """One reply carrying current + the round's average update, for the aggregator.

        The aggregator (FedAvg, FedAdam) then treats it as the round's average, so the server
        optimizer runs unchanged on top of it; item-sum scales item rows by ``cohort``.
        """
        new = [
            (old + delta).astype(old.dtype)
            for old, delta in zip(self.current, average, strict=True)
        ]
        if isinstance(self.aggregator, ItemSumFedAvg):
            self.aggregator.cohort_size = cohort
        reply = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(new), 1, {})
        return proxy, reply, new

    def _noised_average(self, server_round: int, trained: list) -> tuple:
        """DP-FedAvg: one synthetic reply carrying current + noised average update.

        The aggregator (FedAvg, FedAdam) then treats it as the round's average, so the server
        optimizer runs unchanged on top of the privatized update.
        """
        updates = [
            [new - old for new, old in zip(arrays, self.current, strict=True)]
            for _, _, arrays in trained
        ]
        average = self.user_dp.aggregate(
            updates, [a.shape for a in self.current], self.population, server_round
        )
        cohort = self.user_dp.sample_rate(self.population) * self.population
        return self._synthetic(trained[0][0], average, cohort)

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
        if self.config.dp_interaction or self.config.dp_user:
            self.run_dir.log_privacy(self._ledger_entry())
        log(INFO, "%s", progress_line(self.record, self.config.num_server_rounds))
        self.record = {}
        self.device_epsilons = []
        self.device_sigmas = []

    def _ledger_entry(self) -> dict:
        """The round's privacy record: mechanism parameters and ε after the round, both units."""
        entry: dict = {"round": self.record["round"]}
        if "stopped" in self.record:
            entry["stopped"] = self.record["stopped"]
        cfg = self.config
        interaction: dict = {"enabled": cfg.dp_interaction}
        if cfg.dp_interaction:
            eps, sigmas = self.device_epsilons, self.device_sigmas
            interaction.update(
                accountant=cfg.dp_accountant,
                noise_multiplier=cfg.dp_noise_multiplier if not cfg.dp_target_epsilon else None,
                target_epsilon=cfg.dp_target_epsilon or None,
                max_grad_norm=cfg.dp_max_grad_norm,
                delta=cfg.dp_delta,
                epsilon_cap=cfg.dp_epsilon_cap or None,
                sampling="poisson",
                # Per-device q and steps depend on the device's data size, which stays private:
                # only how they are derived is recorded.
                sample_rate_rule=f"batch-size / n per device (batch-size {cfg.batch_size})",
                steps_rule="local-epochs x ceil(n / batch-size)",
                local_epochs=cfg.local_epochs,
                devices_reporting=len(eps),
                epsilon_min=min(eps) if eps else None,
                epsilon_median=float(np.median(eps)) if eps else None,
                epsilon_max=max(eps) if eps else None,
                # σ per device (a target ε is met with a σ that depends on the device's size)
                noise_multiplier_min=min(sigmas) if sigmas else None,
                noise_multiplier_median=float(np.median(sigmas)) if sigmas else None,
                noise_multiplier_max=max(sigmas) if sigmas else None,
                devices_at_cap=len(self.nodes_at_cap),
                budget_exhausted=self.record.get("budget_exhausted", 0),
            )
        user: dict = {"enabled": cfg.dp_user}
        if cfg.dp_user and self.user_dp is not None:
            dp, population = self.user_dp, self.population
            user.update(
                accountant=cfg.dp_accountant,
                noise_multiplier=dp.noise_multiplier,
                clip_norm=dp.clip_norm,
                sample_rate=dp.sample_rate(population),
                population=population,
                expected_cohort=dp.sample_rate(population) * population,
                sampled=self.record.get("fit_sampled", 0),
                replied=self.record.get("fit_replies", 0) - self.record.get("budget_exhausted", 0),
                noise_stddev=dp.noise_stddev(population),
                sampling="poisson",
                delta=dp.delta,
                epsilon_cap=cfg.dp_user_epsilon_cap or None,
                epsilon=dp.epsilon(),
                rounds_accounted=dp.history.steps,
                status=f"skipped: {self.record['skipped']}"
                if "skipped" in self.record
                else ("stopped" if "stopped" in self.record else "aggregated"),
            )
        entry.update(
            interaction_level=interaction,
            user_level=user,
            secure_aggregation=self._secagg_entry(),
            library_versions=library_versions(),
        )
        return entry

    def _secagg_entry(self) -> dict:
        """SecAgg+ is not DP: recorded beside the DP units so a reviewer sees what ran."""
        if self.secagg is None:
            return {"enabled": False}
        plan = self.secagg
        return {
            "enabled": True,
            "bound": plan.bound,
            "num_shares": plan.num_shares,
            "reconstruction_threshold": plan.reconstruction_threshold,
            "clipping_range": plan.clipping_range,
            "quantization_range": plan.quantization_range,
            "modulus_range": plan.modulus_range,
            "max_cohort": plan.max_cohort,
            "survivors": self.record.get("secagg_survivors", 0),
            "clipped_fraction": self.record.get("secagg_clipped_fraction"),
            "status": f"skipped: {self.record['skipped']}"
            if "skipped" in self.record
            else ("stopped" if "stopped" in self.record else "aggregated"),
        }


def model_digest(arrays: list[np.ndarray]) -> str:
    """SHA-256 over every global array's dtype, shape and bytes."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("opacus", "flwr", "torch", "numpy")}


def progress_line(record: dict, total_rounds: int) -> str:
    parts = [f"[confide] round {record['round']}/{total_rounds}"]
    if "stopped" in record:
        parts.append(f"STOPPED ({record['stopped']})")
    elif "skipped" in record:
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


def _reported(replies: list[tuple[ClientProxy, FitRes]], key: str) -> list[float]:
    """A numeric metric the devices report, for the ledger only (never trusted); junk dropped."""
    return [
        float(value)
        for _, r in replies
        if isinstance(value := r.metrics.get(key), (int, float)) and 0 <= value < 1e6
    ]
