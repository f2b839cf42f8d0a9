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

from collections.abc import Mapping

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
