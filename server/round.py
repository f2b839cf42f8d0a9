"""One round as the pipeline sees it: the replies, their sum, the released update, the record.

Everything here lives for one round only; what outlives a round (the model, the optimizer's
moments, the user-level accountant) is owned by the step it belongs to, as plain state.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from flwr.common import FitRes

from shared.records import RoundRecord
from shared.wire import BUDGET_EXHAUSTED, DP_STATUS, LOSS


class SkipRound(Exception):
    """The round must leave the global model unchanged; the message says why."""


@dataclass
class Reply:
    """One device's fit reply. ``update`` is its update (new - current), once validated.

    Under SecAgg+ the server never sees a device's update: ``update`` stays None and ``res`` holds
    the unmasked aggregate Flower hands every result, with the device's plaintext metrics.

    A node that simulates a shard of users (``cohort-size > 1``) replies for all of them at once:
    ``update`` is then the sum of their weighted updates, ``weight`` the sum of their weights and
    ``users`` how many trained (:mod:`server.shard_replies`).
    """

    node_id: int
    res: FitRes  # decoded only by the step that checks it
    update: list[np.ndarray] | None = None
    weight: float | None = None  # a shard's summed weight (None: one device, weighed by the sum)
    users: int = 1  # users whose updates ``update`` holds
    declined: tuple[int, ...] = ()  # a shard's users at their budget (not in ``update``)
    clip_under: int | None = None  # adaptive clipping: trained users whose update was within S

    @property
    def num_examples(self) -> int:
        return self.res.num_examples

    @property
    def metrics(self) -> Mapping[str, Any]:
        return self.res.metrics

    @property
    def trained(self) -> bool:
        # A device at its privacy budget declines to train: counted, never aggregated.
        if self.weight is not None:
            return self.users > 0
        return self.metrics.get(DP_STATUS) != BUDGET_EXHAUSTED


@dataclass(frozen=True)
class RoundSum:
    """The sum of the round's updates, before any noise: ``total`` over ``trained`` devices."""

    total: list[np.ndarray]  # float64, weighted by ``weight`` per device
    weight: float  # the sum of the weights of the devices that trained
    trained: int
    # Adaptive clipping: the exact sum of (clip bit - 1/2) over the devices in the sum, before
    # its noise (None: the round did not ask for bits).
    centred_bits: float | None = None


@dataclass(frozen=True)
class Aggregate:
    """The released average update, and the cohort size item-sum scales item tables by."""

    update: list[np.ndarray]
    cohort: float


@dataclass
class RoundState:
    """The round in progress: its number, timing, sampled nodes and the record being built."""

    number: int
    run_started: float
    started: float = field(default_factory=time.monotonic)
    record: RoundRecord = field(init=False)
    failures: list[Any] = field(default_factory=list)
    asked: dict[int, tuple[int, ...]] = field(default_factory=dict)  # node -> users it was asked

    def __post_init__(self) -> None:
        self.record = RoundRecord(round=self.number)

    def note(self, **fields: Any) -> None:
        """Set fields of the round's record (a typo is a TypeError, not a silent new key)."""
        self.record = replace(self.record, **fields)

    @property
    def closed(self) -> bool:
        """Skipped or stopped: nothing later in the round may change that explanation."""
        return self.record.skipped is not None or self.record.stopped is not None

    def status(self) -> str:
        """The round's outcome for the ledger: aggregated, stopped or skipped (with why)."""
        if self.record.skipped is not None:
            return f"skipped: {self.record.skipped}"
        return "stopped" if self.record.stopped is not None else "aggregated"


def mean_loss(trained: Sequence[Reply]) -> float | None:
    """The example-weighted training loss of the devices that sent one (none do under DP)."""
    losses = [(r.num_examples, float(r.metrics[LOSS])) for r in trained if LOSS in r.metrics]
    if not losses:
        return None
    weights, values = zip(*losses, strict=True)
    return float(np.average(values, weights=weights))
