"""Federated evaluation's replies: checked, averaged, and the fields they add to the round."""

from __future__ import annotations

from logging import WARNING
from typing import Any

import numpy as np
from flwr.common import EvaluateRes, log
from flwr.server.client_proxy import ClientProxy

from shared.wire import EVAL_METRICS


def summarize_evaluation(
    server_round: int,
    results: list[tuple[ClientProxy, EvaluateRes]],
    failures: list[Any],
) -> tuple[float | None, dict[str, float], dict[str, Any]]:
    """(mean loss, mean metrics, record fields); a reply with a metric outside [0, 1] is dropped."""
    rows = []
    for proxy, reply in results:
        values = [reply.metrics.get(key) for key in EVAL_METRICS]
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
    fields: dict[str, Any] = {
        "eval_clients": len(rows),
        "eval_failures": len(failures) + len(results) - len(rows),
    }
    if not rows:
        return None, {}, fields
    loss = float(np.mean([r[0] for r in rows]))
    means = np.mean([r[1] for r in rows], axis=0).tolist()
    metrics = dict(zip(EVAL_METRICS, means, strict=True))
    return loss, metrics, fields | metrics | {"eval_loss": loss}
