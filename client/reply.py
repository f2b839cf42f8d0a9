"""What a device's reply may reveal besides the update itself: the one place that decides it.

Everything in a reply's plaintext part (its weight and metrics) reaches the server as it is,
outside any DP noise and outside SecAgg+'s masking. A device's example count and training loss
are functions of its data: under interaction-level DP one interaction changes them, and under
user-level DP or SecAgg+ no aggregation rule needs them. So under any of the three a device
weighs 1 and sends no loss; under interaction-level DP it reports its status and its ε and σ,
rounded (the exact values would reveal its sampling rate, hence its data size).

The update's arrays are shaped elsewhere: trained in :mod:`client.training_round`, clipped
(and under SecAgg+ masked) by :mod:`client.mods`. Pure functions, no Flower: a new kind of reply
(e.g. the σ of noise a device adds under SecAgg+) is a new rule here and a row in its tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from client.training_round import Evaluation, TrainResult
from shared.config import RunConfig
from shared.wire import (
    DIVERSITY10,
    DP_EPSILON,
    DP_NOISE_MULTIPLIER,
    DP_STATUS,
    EPSILON_DECIMALS,
    EVAL_METRICS,
    LOSS,
    NOISE_CLAMPED,
    SECAGG_CLIPPED,
    SHARD_DECLINED,
    SHARD_EPSILONS,
    SHARD_EVAL,
    SHARD_EVAL_COLUMNS,
    SHARD_NOISE_MULTIPLIERS,
    SHARD_TOP10,
    SHARD_TRAINED,
    SHARD_WEIGHT,
    TOP10,
    TRAINED,
)

Metrics = dict[str, float | str]
PRIVATE_WEIGHT = 1  # every device weighs the same: its example count is private data


def shape_fit_reply(config: RunConfig, result: TrainResult) -> tuple[int, Metrics]:
    """(weight, metrics) of a fit reply: the example count and loss only where nothing is private.

    A device that declined (budget exhausted) trained nothing, so it has no loss to report.
    """
    metrics: Metrics = {}
    if result.status == TRAINED and not config.private_replies:
        metrics[LOSS] = result.loss
    if config.dp_interaction:
        metrics[DP_STATUS] = result.status
        metrics[DP_EPSILON] = round(result.epsilon, EPSILON_DECIMALS)
        metrics[DP_NOISE_MULTIPLIER] = round(result.noise_multiplier, EPSILON_DECIMALS)
    weight = PRIVATE_WEIGHT if config.private_replies else result.num_examples
    return weight, metrics


def shape_masked_reply(
    metrics: Mapping[str, float | str], quantizer_clips: int, noise_clamped: int | None = None
) -> tuple[int, Metrics]:
    """(weight, metrics) of a reply whose update SecAgg+ masks (after clipping).

    Weight 1: Flower's SecAgg+ scales the masked update by it, and the server sees it in the
    clear. The count of coordinates SecAgg+'s quantizer would clip is 0 by construction and says
    nothing about the data; it is sent so that a wrong quantizer setup is seen, not silent.
    Under device noise, the count of noised coordinates clamped into SecAgg+'s range: the
    mechanism's failure event (planned below 1e-15 per run, and added to δ), 0 unless it happens.
    """
    out: Metrics = {**metrics, SECAGG_CLIPPED: quantizer_clips}
    if noise_clamped is not None:
        out[NOISE_CLAMPED] = noise_clamped
    return PRIVATE_WEIGHT, out


def shape_evaluate_reply(
    evaluation: Evaluation, share_top_list: bool
) -> tuple[float, int, dict[str, float | str]]:
    """(loss, weight, metrics) of an evaluate reply: each device counts once in the mean.

    Sent in plaintext under every setting and not counted in the device's ε: the loss and
    HR/NDCG@10 of its held-out item, the measurement the run exists to make, and the diversity
    of its own top-10 list (from the public item tables). The list itself only when the device
    shares it (its policy, :mod:`client.policy`): it reveals the user's recommendations.
    """
    metrics: dict[str, float | str] = {name: evaluation.metrics[name] for name in EVAL_METRICS}
    if DIVERSITY10 in evaluation.metrics:
        metrics[DIVERSITY10] = evaluation.metrics[DIVERSITY10]
    if share_top_list:
        metrics[TOP10] = encode_top_list(evaluation.top)
    return evaluation.loss, 1, metrics


def encode_top_list(top: np.ndarray) -> str:
    """The list as Flower metrics can carry it: item ids, best first, comma-separated."""
    return ",".join(str(int(i)) for i in top)


def shape_shard_fit_reply(
    config: RunConfig,
    users: Sequence[int],
    results: Sequence[TrainResult],
    updates: Sequence[Sequence[np.ndarray]],
) -> tuple[list[np.ndarray], int, Metrics]:
    """(arrays, num_examples, metrics) of a shard's fit reply (``cohort-size > 1``).

    The arrays are the sum of the trained users' updates (already clipped under user-level DP),
    each weighed as the server would weigh its device (:func:`aggregation_weight`); users at
    their budget are named and left out. Per user, the same facts its own reply would carry and
    no more: a loss only where :func:`shape_fit_reply` sends one (then example-weighted), the
    rounded ε and σ under interaction-level DP.
    """
    trained = [i for i, r in enumerate(results) if r.status == TRAINED]
    shapes = [np.shape(a) for a in updates[0]] if updates else []
    total = [np.zeros(shape, dtype=np.float64) for shape in shapes]
    weight = 0.0
    for i in trained:
        w = aggregation_weight(config, results[i].num_examples)
        for acc, part in zip(total, updates[i], strict=True):
            acc += np.multiply(part, w, dtype=np.float64)
        weight += w
    return (total, *_shard_fit_metrics(config, users, results, weight))


def shape_pooled_shard_reply(
    config: RunConfig,
    users: Sequence[int],
    results: Sequence[TrainResult],
    total: Sequence[np.ndarray],
) -> tuple[list[np.ndarray], int, Metrics]:
    """A shard's fit reply in a pooled round (``dp-interaction-mode = "pooled"``): ``total`` is
    already the sum of its trained users' parts (minus their clipped gradient sums), each user
    weighing 1 as its device would (its reply is private)."""
    weight = float(sum(1 for r in results if r.status == TRAINED))
    return (list(total), *_shard_fit_metrics(config, users, results, weight))


def _shard_fit_metrics(
    config: RunConfig, users: Sequence[int], results: Sequence[TrainResult], weight: float
) -> tuple[int, Metrics]:
    trained = [i for i, r in enumerate(results) if r.status == TRAINED]
    metrics: Metrics = {SHARD_TRAINED: len(trained), SHARD_WEIGHT: weight}
    declined = [users[i] for i, r in enumerate(results) if r.status != TRAINED]
    metrics[SHARD_DECLINED] = np.asarray(declined, dtype=np.int64).tobytes()
    reply_weights = [shape_fit_reply(config, results[i])[0] for i in trained]
    if trained and not config.private_replies:
        losses = [results[i].loss for i in trained]
        metrics[LOSS] = float(np.average(losses, weights=reply_weights))
    if config.dp_interaction:
        eps = [round(r.epsilon, EPSILON_DECIMALS) for r in results]
        sigmas = [round(results[i].noise_multiplier, EPSILON_DECIMALS) for i in trained]
        metrics[SHARD_EPSILONS] = np.asarray(eps, dtype=np.float64).tobytes()
        metrics[SHARD_NOISE_MULTIPLIERS] = np.asarray(sigmas, dtype=np.float64).tobytes()
    return int(sum(reply_weights)), metrics


def aggregation_weight(config: RunConfig, num_examples: int) -> float:
    """A device's weight in the server's sum: 1 where its example count is private or the rule
    is uniform (item-sum, user-level DP), else its example count (FedAvg, FedAdam)."""
    return 1.0 if config.uniform_weights or config.private_replies else float(num_examples)


def shape_shard_evaluate_reply(
    evaluations: Sequence[Evaluation], share_top_list: bool
) -> tuple[float, int, dict[str, float | bytes]]:
    """A shard's evaluate reply: each user's figures (as :func:`shape_evaluate_reply` would send
    them) as one row of ``SHARD_EVAL``, and their lists only when they share them."""
    rows = [
        [e.loss, *(e.metrics[name] for name in EVAL_METRICS), e.metrics.get(DIVERSITY10, np.nan)]
        for e in evaluations
    ]
    table = np.asarray(rows, dtype=np.float64).reshape(-1, len(SHARD_EVAL_COLUMNS))
    metrics: dict[str, float | bytes] = {SHARD_EVAL: table.tobytes()}
    if share_top_list:
        tops = np.asarray([e.top for e in evaluations], dtype=np.int64).reshape(-1, 10)
        metrics[SHARD_TOP10] = tops.tobytes()
    loss = float(np.mean(table[:, 0])) if len(table) else 0.0
    return loss, len(evaluations), metrics
