"""ClientApp: Flower glue over :mod:`client.local` (legacy NumPyClient route, SecAgg+-capable).

One supernode is one user (``partition-id`` = dense user index). The private user embedding lives
in ``context.state`` between rounds: it is never part of a reply.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, RecordDict
from flwr.client import ClientApp, NumPyClient

from client import local
from client.mods import fault_injection_mod, secagg_mod, user_clipping_mod
from shared.config import RunConfig
from shared.privacy import TRAINED, PrivacyHistory
from shared.split import UserData, split_for

PRIVATE_RECORD = "confide.private-embedding"
HISTORY_RECORD = "confide.privacy-history"  # the device's DP-SGD accountant, whole run


class DeviceClient(NumPyClient):
    def __init__(self, config: RunConfig, data: UserData, user_id: int, state: RecordDict) -> None:
        self.run_config = config
        self.data = data
        self.user_id = user_id
        self.state = state

    def _private(self) -> dict[str, np.ndarray] | None:
        record = self.state.array_records.get(PRIVATE_RECORD)
        return None if record is None else {k: v.numpy() for k, v in record.items()}

    def _history(self) -> PrivacyHistory:
        record = self.state.array_records.get(HISTORY_RECORD)
        return (
            PrivacyHistory()
            if record is None
            else PrivacyHistory.from_array(record["steps"].numpy())
        )

    def fit(self, parameters, config):
        result = local.train(
            self.run_config,
            self.data,
            self.user_id,
            int(config["server-round"]),
            parameters,
            self._private(),
            self._history(),
        )
        self.state.array_records[PRIVATE_RECORD] = ArrayRecord(
            array_dict={k: Array(v) for k, v in result.private.items()}
        )
        self.state.array_records[HISTORY_RECORD] = ArrayRecord(
            array_dict={"steps": Array(result.history.to_array())}
        )
        metrics: dict[str, float | str] = {}
        if result.status == TRAINED:
            metrics["loss"] = result.loss
        if self.run_config.dp_interaction:
            # Rounded: the exact ε would reveal the device's sampling rate, hence its data size.
            metrics.update(dp_status=result.status, dp_epsilon=round(result.epsilon, 1))
        return result.global_arrays, result.num_examples, metrics

    def evaluate(self, parameters, config):
        loss, metrics = local.evaluate(
            self.run_config, self.data, self.user_id, parameters, self._private()
        )
        return loss, 1, metrics


def client_fn(context: Context):
    torch.set_num_threads(1)  # one thread per Ray actor: actors already fill the cores
    config = RunConfig.from_mapping(context.run_config)
    user_id = int(context.node_config["partition-id"])
    split = split_for(config)
    if user_id >= split.num_users:
        raise ValueError(
            f"partition-id {user_id} has no user: the dataset has {split.num_users} users; "
            f"run with at most num-supernodes={split.num_users}"
        )
    return DeviceClient(config, split.user_data(user_id), user_id, context.state).to_client()


# Order matters: SecAgg+ must mask the update AFTER it is clipped (DESIGN.md §6).
app = ClientApp(client_fn=client_fn, mods=[fault_injection_mod, secagg_mod, user_clipping_mod])
