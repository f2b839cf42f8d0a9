"""Drives a strategy through rounds of Flower's hooks with scripted replies, no Flower runtime.

Kept free of the server's own imports so that the same driver ran the strategy before the
pipeline existed: tests/fixtures/strategy_golden.json is what that strategy wrote.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import (
    Code,
    EvaluateRes,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)

from shared.privacy import clip_update

# config changes per case: every branch the old strategy had
CASES: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "fedavg_m": {"server_momentum": 0.9, "server_learning_rate": 0.7},
    "itemsum": {"strategy": "itemsum"},
    "itemsum_m": {"strategy": "itemsum", "server_momentum": 0.9},
    "fedadam": {"strategy": "fedadam", "server_learning_rate": 0.01},
    "dp_user": {
        "dp_user": True,
        "dp_reproducible_noise": True,
        "fraction_fit": 0.5,
        "dp_user_clip_norm": 0.3,
        "dp_interaction": True,
    },
    "dp_user_itemsum": {
        "dp_user": True,
        "dp_reproducible_noise": True,
        "strategy": "itemsum",
        "fraction_fit": 0.5,
    },
    "dp_cap": {
        "dp_user": True,
        "dp_reproducible_noise": True,
        "fraction_fit": 1.0,
        "dp_user_noise_multiplier": 2.0,
        "dp_user_epsilon_cap": 3.5,
    },
    "secagg": {"secagg": True, "clients_per_round": 6},
    "secagg_dp": {"secagg": True, "dp_user": True, "dp_reproducible_noise": True},
}
VOLATILE = {"fit_seconds", "round_seconds", "elapsed_seconds", "model_sha256"}


class Proxy:
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id


class Clients:
    """Flower's ClientManager as the strategy uses it: 12 nodes, sampled in order."""

    def __init__(self, n: int = 12) -> None:
        self.clients = {i: Proxy(i) for i in range(100, 100 + n)}

    def all(self):
        return dict(self.clients)

    def num_available(self) -> int:
        return len(self.clients)

    def sample(self, num_clients: int, min_num_clients: int):
        return list(self.clients.values())[:num_clients]


def _fit_replies(ins, current, rng, changes, server_round):
    replies = []
    if changes.get("secagg"):
        if not ins:
            return replies
        bound = 0.3 if changes.get("dp_user") else 1.0
        ups = [
            clip_update([rng.normal(scale=0.05, size=a.shape) for a in current], bound)[0]
            for _ in ins
        ]
        mean = ndarrays_to_parameters([np.mean(p, axis=0) for p in zip(*ups, strict=True)])
        for k, (proxy, _) in enumerate(ins):
            metrics: dict[str, Any] = {"secagg_clipped": 0}
            if k == 0 and server_round == 2:
                metrics["dp_status"] = "budget-exhausted"
            replies.append((proxy, FitRes(Status(Code.OK, ""), mean, 1, metrics)))
        return replies
    for k, (proxy, _) in enumerate(ins):
        new = [(a + rng.normal(scale=0.05, size=a.shape)).astype(a.dtype) for a in current]
        metrics = {"loss": float(rng.random())}
        if changes.get("dp_interaction"):
            metrics = {
                "dp_status": "trained" if k else "budget-exhausted",
                "dp_epsilon": 1.0 + k / 10,
                "dp_noise_multiplier": 2.0,
            }
        if k == 1 and server_round == 3:
            new[0] = new[0] * np.nan  # rejected by validation
        examples = int(rng.integers(1, 50))
        replies.append(
            (proxy, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(new), examples, metrics))
        )
    return replies


def drive(strategy, changes: dict[str, Any], run_dir: Path, rounds: int = 4) -> dict[str, Any]:
    """Rounds 1..rounds; returns what was sent, model checksums, metrics and ledger rows."""
    clients = Clients()
    params = strategy.initialize_parameters(clients)
    rng = np.random.default_rng(0)
    sent, sums = [], []
    for server_round in range(1, rounds + 1):
        ins = strategy.configure_fit(server_round, params, clients)
        current = parameters_to_ndarrays(params)
        sent.append([[p.node_id, sorted(i.config.items())] for p, i in ins])
        replies = _fit_replies(ins, current, rng, changes, server_round)
        if changes.get("secagg") and ins:
            for stage in ("setup", "share-keys", "collect", "unmask"):
                strategy.secagg_stage(stage, len(ins), None)
        if ins:
            failures = [RuntimeError("crashed")] if server_round == 2 else []
            new, _ = strategy.aggregate_fit(server_round, replies, failures)
            params = new if new is not None else params
        evaluate = strategy.configure_evaluate(server_round, params, clients)
        if evaluate:
            metrics = {"hr10": 0.5, "ndcg10": 0.25, "full_ndcg10": 0.1}
            results = [
                (
                    proxy,
                    EvaluateRes(
                        Status(Code.OK, ""),
                        float(rng.random()),
                        1,
                        metrics | {"full_hr10": float(rng.random())},
                    ),
                )
                for proxy, _ in evaluate
            ]
            strategy.aggregate_evaluate(server_round, results, [])
        arrays = parameters_to_ndarrays(params)
        sums.append([[str(a.dtype), float(a.sum()), float(np.square(a).sum())] for a in arrays])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ledger_path = run_dir / "privacy_ledger.jsonl"
    ledger = []
    if ledger_path.exists():
        ledger = [json.loads(line) for line in ledger_path.read_text().splitlines()]
    return {
        "sent": json.loads(json.dumps(sent)),
        "sums": sums,
        "metrics": [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows],
        "ledger": [{k: v for k, v in e.items() if k != "library_versions"} for e in ledger],
    }


def update_of_norm(current, norm: float, rng: np.random.Generator) -> list[np.ndarray]:
    """A random update of the model ``current``'s shapes with l2 norm exactly ``norm``."""
    raw = [rng.normal(size=np.shape(a)) for a in current]
    scale = norm / math.sqrt(sum(float(np.sum(r**2)) for r in raw))
    return [r * scale for r in raw]
