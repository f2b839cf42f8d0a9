"""The server optimizer's math as pure functions over plain state, and the state itself.

Each function takes the current global model and the round's released average update (float64,
already noised under user-level DP) and returns the new model and the optimizer's new state; they
reproduce Flower's FedAvgM and FedAdam (tests/server/test_optimizers.py checks them against
Flower's own strategies) and the item-sum rule of :mod:`server.steps.optimizer`. State is a plain
dataclass of arrays so that a checkpoint can write it and a resumed run continue it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Arrays = list[np.ndarray]


@dataclass
class ModelState:
    """The global model: the ONLY copy the server keeps (validation and SecAgg+ read it)."""

    arrays: Arrays

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [a.shape for a in self.arrays]

    @property
    def size(self) -> int:
        return sum(a.size for a in self.arrays)


@dataclass
class OptimizerState:
    """What a server optimizer carries between rounds (None until its first step)."""

    velocity: Arrays | None = None  # FedAvgM / item-sum momentum
    first_moment: Arrays | None = None  # FedAdam m_t
    second_moment: Arrays | None = None  # FedAdam v_t


def fedavgm(
    current: Sequence[np.ndarray],
    update: Sequence[np.ndarray],
    state: OptimizerState,
    *,
    learning_rate: float,
    momentum: float,
) -> tuple[Arrays, OptimizerState]:
    """FedAvgM: v = momentum v + update; params += learning_rate v (rate 1, momentum 0: FedAvg).

    Flower's FedAvgM steps on the pseudo-gradient (current - average), the negated update; the
    arithmetic is the same. The model keeps its dtype.
    """
    steps = list(update)
    velocity = state.velocity
    if momentum > 0.0:
        velocity = (
            steps
            if velocity is None
            else [momentum * v + s for v, s in zip(velocity, steps, strict=True)]
        )
        steps = velocity
    new = [(c + learning_rate * s).astype(c.dtype) for c, s in zip(current, steps, strict=True)]
    return new, OptimizerState(velocity=velocity)


def item_sum(
    current: Sequence[np.ndarray],
    update: Sequence[np.ndarray],
    state: OptimizerState,
    *,
    is_item_table: Sequence[bool],
    cohort: float,
    learning_rate: float,
    momentum: float,
) -> tuple[Arrays, OptimizerState]:
    """Item tables step by the SUM (mean update x cohort), dense layers by the mean; then FedAvgM.

    ``cohort`` is the devices that trained, or the fixed denominator q N under user-level DP (the
    sum is then a rescaling of the privatized average: post-processing, no privacy cost).
    """
    steps = [
        (cohort if is_item else 1.0) * u for u, is_item in zip(update, is_item_table, strict=True)
    ]
    return fedavgm(current, steps, state, learning_rate=learning_rate, momentum=momentum)


def fedadam(
    current: Sequence[np.ndarray],
    update: Sequence[np.ndarray],
    state: OptimizerState,
    *,
    server_round: int,
    eta: float,
    beta_1: float,
    beta_2: float,
    tau: float,
) -> tuple[Arrays, OptimizerState]:
    """FedAdam (Reddi et al. 2021) with Flower's bias correction, indexed by the round number.

    As in Flower, the step is float64, so the global model becomes float64 after the first step.
    """
    m = state.first_moment or [np.zeros_like(u) for u in update]
    v = state.second_moment or [np.zeros_like(u) for u in update]
    m = [beta_1 * x + (1 - beta_1) * u for x, u in zip(m, update, strict=True)]
    v = [beta_2 * x + (1 - beta_2) * np.multiply(u, u) for x, u in zip(v, update, strict=True)]
    eta_norm = (
        eta
        * np.sqrt(1 - np.power(beta_2, server_round + 1.0))
        / (1 - np.power(beta_1, server_round + 1.0))
    )
    new = [c + eta_norm * x / (np.sqrt(y) + tau) for c, x, y in zip(current, m, v, strict=True)]
    return new, OptimizerState(first_moment=m, second_moment=v)
