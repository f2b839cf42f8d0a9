"""OPTIMIZE-phase step: the server optimizer, which owns the global model and its own state."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from server.optimizers import ModelState, OptimizerState, fedadam, fedavgm, item_sum
from server.pipeline import Phase, Step
from server.round import Aggregate, RoundState
from shared.config import RunConfig

# FedAdam's moment decay rates, as the strategy always configured Flower's FedAdam.
ADAM_BETAS = (0.9, 0.99)


class ServerOptimizer(Step):
    """FedAvg(M), item-sum or FedAdam on the released update.

    ``model`` is the run's only copy of the global model (validation and SecAgg+ read it) and
    ``state`` the optimizer's moments: both plain data, for a checkpoint to write.
    """

    phase = Phase.OPTIMIZE

    def __init__(
        self, rule: str, model: ModelState, names: Sequence[str], config: RunConfig
    ) -> None:
        self.rule = rule
        self.model = model
        self.state = OptimizerState()
        self.is_item_table = [name.startswith("item_") for name in names]
        self.learning_rate = config.server_learning_rate
        self.momentum = config.server_momentum
        self.tau = config.server_adam_tau

    def apply(self, rnd: RoundState, aggregate: Aggregate) -> None:
        new, self.state = self._step(rnd, aggregate)
        self.model.arrays = [np.asarray(a) for a in new]

    def _step(
        self, rnd: RoundState, aggregate: Aggregate
    ) -> tuple[list[np.ndarray], OptimizerState]:
        given = (self.model.arrays, aggregate.update, self.state)
        if self.rule == "fedadam":
            beta_1, beta_2 = ADAM_BETAS
            return fedadam(
                *given,
                server_round=rnd.number,
                eta=self.learning_rate,
                beta_1=beta_1,
                beta_2=beta_2,
                tau=self.tau,
            )
        step = {"learning_rate": self.learning_rate, "momentum": self.momentum}
        if self.rule == "itemsum":
            return item_sum(
                *given, is_item_table=self.is_item_table, cohort=aggregate.cohort, **step
            )
        return fedavgm(*given, **step)  # FedAvgM with no momentum and rate 1.0 is plain FedAvg
