"""Checks every client reply before it can touch the global model.

Flower's FedAvg lets NaN/Inf and huge updates through, crashes on wrong shapes with a raw
ValueError and divides by zero when all weights are 0 (docs/design.md §8). A reply that fails any
check here is rejected with a reason; it is never aggregated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flwr.common import FitRes, parameters_to_ndarrays


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
        try:
            arrays = parameters_to_ndarrays(reply.parameters)
        except Exception as err:  # any undecodable payload is the client's fault, not ours
            raise InvalidReply(f"parameters could not be decoded as NumPy arrays: {err}") from None
        if len(arrays) != len(self.names):
            raise InvalidReply(f"expected {len(self.names)} arrays, got {len(arrays)}")
        squared_norm = 0.0
        for name, shape, array, old in zip(self.names, self.shapes, arrays, current, strict=True):
            if array.dtype != self.dtype:
                raise InvalidReply(f"{name}: dtype {array.dtype}, expected {self.dtype}")
            if array.shape != shape:
                raise InvalidReply(f"{name}: shape {array.shape}, expected {shape}")
            if not np.isfinite(array).all():
                raise InvalidReply(f"{name}: contains NaN or Inf")
            squared_norm += float(np.sum((array.astype(np.float64) - old) ** 2))
        norm = squared_norm**0.5
        if norm > self.max_update_norm:
            raise InvalidReply(
                f"update L2 norm {norm:.3g} exceeds max-update-norm {self.max_update_norm:g}"
            )
        return arrays
