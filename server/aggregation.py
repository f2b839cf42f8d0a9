"""Item-sum FedAvg: the aggregation rule for models whose shared part is mostly embedding rows.

A device's update changes only the item rows it touched (its positives and sampled negatives).
Averaging over the whole cohort divides each row's update by the cohort size, however few devices
touched it, so item embeddings crawl while the dense layers, which every device updates, move at
the average rate. Here every update is weighted uniformly; dense layers take the cohort's mean
update, item tables (parameters named ``item_*``) the SUM, i.e. the mean times the cohort size:
each row moves as its users' data moved it, like one pass of centralized training over the
cohort's data. Under user-level DP the cohort size is the fixed denominator q N, so the sum is a
rescaling of the privatized average (post-processing, no privacy cost).

The server then steps like FedAvgM: v = momentum v + step, params += server_learning_rate v
(momentum 0 and rate 1 apply the step as it is; DP-FedAvg, McMahan et al. 2018, used 0.9).
Under DP, momentum smooths the independent noise of successive rounds, but with small steps a
rate of lr (1 - momentum) moves signal and accumulated noise like plain steps of rate lr.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg


class ItemSumFedAvg(FedAvg):
    def __init__(
        self,
        *,
        initial_parameters: Parameters,
        names: Sequence[str],
        server_learning_rate: float = 1.0,
        server_momentum: float = 0.0,
    ) -> None:
        super().__init__(initial_parameters=initial_parameters)
        self.current = parameters_to_ndarrays(initial_parameters)
        self.server_learning_rate = server_learning_rate
        self.server_momentum = server_momentum
        self.velocity: list[np.ndarray] | None = None
        self.is_item_table = [name.startswith("item_") for name in names]
        self.cohort_size: float | None = None  # set by the caller for a pre-averaged reply

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list,
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if not results:
            return None, {}
        replies = [parameters_to_ndarrays(res.parameters) for _, res in results]
        cohort = self.cohort_size or len(replies)
        steps = []
        for i, (old, is_item) in enumerate(zip(self.current, self.is_item_table, strict=True)):
            mean_update = np.mean([reply[i].astype(np.float64) - old for reply in replies], axis=0)
            steps.append((cohort if is_item else 1.0) * mean_update)
        if self.server_momentum:
            if self.velocity is None:
                self.velocity = [np.zeros_like(step) for step in steps]
            pairs = zip(self.velocity, steps, strict=True)
            self.velocity = [self.server_momentum * v + s for v, s in pairs]
            steps = self.velocity
        new = [
            (old + self.server_learning_rate * step).astype(old.dtype)
            for old, step in zip(self.current, steps, strict=True)
        ]
        self.current = new
        return ndarrays_to_parameters(new), {}
