"""Federated evaluation's replies: checked, averaged, and the fields they add to the round.

Accuracy (HR/NDCG@10) and each list's diversity are means over the devices, each device's own
figure. Catalogue coverage, exposure Gini and novelty are properties of all the lists together,
so the server computes them from the top-10 lists the devices share (``top10``; a deployed
device shares its list only if its owner opts in, :mod:`client.policy`). Novelty needs how many
users hold each item: a simulation's server has the pooled split for that; a deployed one has
no data and records no novelty.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import EvaluateRes, log
from flwr.server.client_proxy import ClientProxy

from shared.baselines import POPULARITY, popularity_beyond_accuracy
from shared.beyond_accuracy import (
    BEYOND_ACCURACY,
    COVERAGE10,
    EXPOSURE_GINI10,
    NOVELTY10,
    coverage,
    exposure_gini,
    item_shares,
    novelty,
)
from shared.records import BEYOND_ACCURACY_FILE, read_rounds
from shared.rundir import atomic_write_text
from shared.split import LeaveOneOut
from shared.wire import DIVERSITY10, EVAL_METRICS, TOP10

LIST_LENGTH = 10
TARGET_EXPOSURE10 = "target_exposure10"  # the poisoning audit's ER@10
MAX_DIVERSITY = 2.0  # 1 - cos of two unit vectors lies in [0, 2]


@dataclass(frozen=True)
class Catalogue:
    """What the server knows of the catalogue: its size, and in simulation the share of training
    users holding each item (``shares``, for novelty; None when deployed)."""

    num_items: int
    shares: np.ndarray | None = None
    num_users: int = 0
    audit_item: int | None = None  # the poisoning audit's target: its exposure is recorded

    @classmethod
    def of_split(cls, split: LeaveOneOut, audit_item: int | None = None) -> Catalogue:
        shares = item_shares(split.train_indptr, split.train_items, split.num_items)
        return cls(split.num_items, shares, split.num_users, audit_item)


def parse_top_list(value: object, num_items: int) -> np.ndarray:
    """A device's ``top10`` ("i1,...,i10"), as item ids; ValueError saying what is wrong."""
    if not isinstance(value, str):
        raise ValueError(f"{TOP10} must be a string of item ids, got {type(value).__name__}")
    parts = value.split(",")
    if len(parts) != LIST_LENGTH or not all(p.isdigit() for p in parts):
        raise ValueError(f"{TOP10} must be {LIST_LENGTH} comma-separated item ids, got {value!r}")
    items = np.array([int(p) for p in parts], dtype=np.int64)
    if items.max() >= num_items:
        raise ValueError(f"{TOP10} names item {items.max()}; the catalogue has {num_items}")
    if len(set(items.tolist())) != LIST_LENGTH:
        raise ValueError(f"{TOP10} repeats an item: {value!r}")
    return items


def _checked(reply: EvaluateRes, catalogue: Catalogue | None) -> tuple[list[float], Any, Any]:
    """(accuracy metrics, diversity or None, list or None); ValueError if any is malformed."""
    values = [reply.metrics.get(key) for key in EVAL_METRICS]
    if not all(_number_in(v, 1.0) for v in values):
        raise ValueError(f"accuracy metrics outside [0, 1]: {values}")
    diversity = reply.metrics.get(DIVERSITY10)
    if diversity is not None and not _number_in(diversity, MAX_DIVERSITY):
        raise ValueError(f"{DIVERSITY10} must lie in [0, {MAX_DIVERSITY:g}], got {diversity!r}")
    sent = reply.metrics.get(TOP10)
    # Without a catalogue the lists cannot be checked, and are not used.
    top = None if sent is None or catalogue is None else parse_top_list(sent, catalogue.num_items)
    return values, diversity, top


def _number_in(value: object, upper: float) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and 0.0 <= value <= upper  # type: ignore[operator]


def summarize_evaluation(
    server_round: int,
    results: list[tuple[ClientProxy, EvaluateRes]],
    failures: list[Any],
    catalogue: Catalogue | None = None,
    asked: int = 0,
) -> tuple[float | None, dict[str, float], dict[str, Any]]:
    """(mean loss, mean metrics, record fields); a reply with a malformed metric is dropped.

    ``asked``: the devices asked to evaluate. One that did not answer within ``round-timeout``
    is in neither list (Flower reports no failure for it), so it is counted from ``asked``.
    """
    rows, diversities, lists = [], [], []
    for proxy, reply in results:
        try:
            values, diversity, top = _checked(reply, catalogue)
        except ValueError as err:
            log(
                WARNING,
                "round %d: rejected evaluation from node %s: %s",
                server_round,
                proxy.node_id,
                err,
            )
            continue
        rows.append((reply.loss, values))
        if diversity is not None:
            diversities.append(float(diversity))
        if top is not None:
            lists.append(top)
    fields: dict[str, Any] = {
        "eval_clients": len(rows),
        "eval_failures": max(len(failures) + len(results), asked) - len(rows),
    }
    if not rows:
        return None, {}, fields
    loss = float(np.mean([r[0] for r in rows]))
    means = np.mean([r[1] for r in rows], axis=0).tolist()
    metrics = dict(zip(EVAL_METRICS, means, strict=True)) | beyond_accuracy_fields(
        diversities, lists, catalogue
    )
    return loss, metrics, fields | metrics | {"eval_loss": loss}


def beyond_accuracy_fields(
    diversities: list[float], lists: list[np.ndarray], catalogue: Catalogue | None
) -> dict[str, float]:
    """The figures the replies allow: coverage and Gini need lists, novelty also the shares."""
    out: dict[str, float] = {}
    if diversities:
        out[DIVERSITY10] = float(np.mean(diversities))
    if lists and catalogue is not None:  # (the record's field order is fixed in RoundRecord)
        stacked = np.stack(lists)
        out[COVERAGE10] = coverage(stacked, catalogue.num_items)
        if catalogue.shares is not None:
            out[NOVELTY10] = novelty(stacked, catalogue.shares, catalogue.num_users)
        out[EXPOSURE_GINI10] = exposure_gini(stacked, catalogue.num_items)
        if catalogue.audit_item is not None:  # ER@10: share of the lists that show the target
            out[TARGET_EXPOSURE10] = float(np.mean(np.any(stacked == catalogue.audit_item, axis=1)))
    return out


def write_beyond_accuracy(run_dir: Path, split: LeaveOneOut, vectors: np.ndarray) -> Path:
    """``beyond_accuracy.json`` of a simulation: the last evaluation's four figures (from the
    devices' lists) beside the popularity ranking's on the same split, popularity's diversity
    measured with the final global model's item tables (the space the devices measured in)."""
    evaluated = [r for r in read_rounds(run_dir) if r.evaluated]
    last = evaluated[-1] if evaluated else None
    model = {"round": last.round if last else None}
    model |= {k: last.metric(k) if last else None for k in BEYOND_ACCURACY}
    figures = {
        "model": model,
        POPULARITY: popularity_beyond_accuracy(split, vectors),
        "diversity_vectors": "the final global model's item tables (shared/item_vectors.py)",
    }
    path = run_dir / BEYOND_ACCURACY_FILE
    atomic_write_text(path, json.dumps(figures, indent=2) + "\n")
    return path
