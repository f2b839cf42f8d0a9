"""Checks every client reply before it can touch the global model.

Flower's FedAvg lets NaN/Inf and huge updates through, crashes on wrong shapes with a raw
ValueError and divides by zero when all weights are 0 (docs/design.md §8). A reply that fails any
check here is rejected with a reason; it is never aggregated. The plaintext metrics the server
acts on are checked too: a training loss that is not a finite number would poison (or crash)
the round's mean loss, and an unknown DP status would count a device as trained.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.common import FitRes, parameters_to_ndarrays

from shared.wire import BUDGET_EXHAUSTED, DP_STATUS, LOSS, TRAINED


class InvalidReply(ValueError):
    """A client reply that must not be aggregated; the message says why."""


@dataclass(frozen=True)
class ReplyValidator:
    """What a valid reply looks like: the global layout and sane bounds."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtype: np.dtype
    max_num_examples: int
    max_update_norm: float

    @classmethod
    def for_global(
        cls,
        names: Sequence[str],
        arrays: Sequence[np.ndarray],
        *,
        max_num_examples: int,
        max_update_norm: float,
    ) -> ReplyValidator:
        return cls(
            names=tuple(names),
            shapes=tuple(tuple(a.shape) for a in arrays),
            dtype=np.dtype(arrays[0].dtype),
            max_num_examples=max_num_examples,
            max_update_norm=max_update_norm,
        )

    def check(self, reply: FitRes, current: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The reply's arrays if it is valid; raises :class:`InvalidReply` otherwise."""
        examples = reply.num_examples
        if isinstance(examples, bool) or not isinstance(examples, (int, np.integer)):
            raise InvalidReply(f"num_examples must be an integer, got {type(examples).__name__}")
        if not 1 <= examples <= self.max_num_examples:
            raise InvalidReply(
                f"num_examples {examples} outside [1, {self.max_num_examples}] (max-num-examples)"
            )
        check_metrics(reply.metrics)
        arrays, squared_norm = self.checked_arrays(reply.parameters, current)
        norm = squared_norm**0.5
        if norm > self.max_update_norm:
            raise InvalidReply(
                f"update L2 norm {norm:.3g} exceeds max-update-norm {self.max_update_norm:g}"
            )
        return arrays

    def checked_arrays(
        self, parameters, current: Sequence[np.ndarray] | None = None, *, dtype: bool = True
    ) -> tuple[list[np.ndarray], float]:
        """A payload's arrays, each checked (count, dtype unless ``dtype=False``, shape, finite),
        and the squared L2 norm of their difference from ``current`` (of the arrays themselves
        when None: a shard's sum of updates, in float64); raises :class:`InvalidReply`."""
        try:
            arrays = parameters_to_ndarrays(parameters)
        except Exception as err:  # any undecodable payload is the sender's fault, not ours
            raise InvalidReply(f"parameters could not be decoded as NumPy arrays: {err}") from None
        if len(arrays) != len(self.names):
            raise InvalidReply(f"expected {len(self.names)} arrays, got {len(arrays)}")
        squared_norm = 0.0
        for i, (name, shape, array) in enumerate(zip(self.names, self.shapes, arrays, strict=True)):
            if dtype and array.dtype != self.dtype:
                raise InvalidReply(f"{name}: dtype {array.dtype}, expected {self.dtype}")
            if array.shape != shape:
                raise InvalidReply(f"{name}: shape {array.shape}, expected {shape}")
            if not np.isfinite(array).all():
                raise InvalidReply(f"{name}: contains NaN or Inf")
            change = array.astype(np.float64) - (0.0 if current is None else current[i])
            squared_norm += float(np.sum(np.square(change)))
        return arrays, squared_norm


def check_metrics(metrics: Any) -> None:
    """The fit metrics the server reads: ``loss`` a finite number, ``dp_status`` a known one.

    Other metrics (a device's reported ε and σ) are never trusted and junk is dropped where they
    are read (:mod:`server.steps.replies`); unknown keys are ignored.
    """
    if not isinstance(metrics, Mapping):
        raise InvalidReply(f"metrics must be a mapping, got {type(metrics).__name__}")
    if LOSS in metrics:
        loss = metrics[LOSS]
        if not _finite_number(loss):
            raise InvalidReply(
                f"metric {LOSS!r} must be a finite number, got {type(loss).__name__} {_short(loss)}"
            )
    status = metrics.get(DP_STATUS, TRAINED)
    if not isinstance(status, str) or status not in (TRAINED, BUDGET_EXHAUSTED):
        raise InvalidReply(
            f"metric {DP_STATUS!r} must be {TRAINED!r} or {BUDGET_EXHAUSTED!r}, got "
            f"{_short(status)}"
        )


def _finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond float range: the mean loss could not be taken
        return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
