"""OPTIMIZE-phase step: the server optimizer, which owns the global model and its own state."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np

from server.optimizers import ModelState, OptimizerState, fedadam, fedavgm, item_sum
from server.pipeline import Phase, Step
from server.round import Aggregate, RoundState
from shared.config import RunConfig

# FedAdam's moment decay rates and the client learning rate Flower's FedAdam is given (eta_l,
# unused by its server step), as the strategy always configured them.
ADAM_BETAS = (0.9, 0.99)


class ServerOptimizer(Step):
    """FedAvg(M), item-sum or FedAdam on the released update; the model is ``self.model``."""

    phase = Phase.OPTIMIZE

    def __init__(
        self, rule: str, model: ModelState, names: Sequence[str], config: RunConfig
    ) -> None:
        self.rule = rule
        self.model = model
        self.state = OptimizerState()
        self._step = self._rule(rule, names, config)

    @staticmethod
    def _rule(rule: str, names: Sequence[str], config: RunConfig):
        rate, momentum = config.server_learning_rate, config.server_momentum
        if rule == "itemsum":
            is_item = [name.startswith("item_") for name in names]
            return lambda cur, agg, st, _: item_sum(
                cur, agg.update, st, is_item_table=is_item, cohort=agg.cohort,
                learning_rate=rate, momentum=momentum,
            )  # fmt: skip
        if rule == "fedadam":
            adam = partial(
                fedadam, eta=rate, beta_1=ADAM_BETAS[0], beta_2=ADAM_BETAS[1],
                tau=config.server_adam_tau,
            )  # fmt: skip
            return lambda cur, agg, st, rnd: adam(cur, agg.update, st, server_round=rnd)
        # FedAvgM with no momentum and rate 1.0 is plain FedAvg.
        return lambda cur, agg, st, _: fedavgm(
            cur, agg.update, st, learning_rate=rate, momentum=momentum
        )

    def apply(self, rnd: RoundState, aggregate: Aggregate) -> None:
        new, self.state = self._step(self.model.arrays, aggregate, self.state, rnd.number)
        self.model.arrays = [np.asarray(a) for a in new]
