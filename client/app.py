"""ClientApp: Flower glue over :mod:`client.local` (legacy NumPyClient route, SecAgg+-capable).

One supernode is one user: in simulation ``partition-id`` = dense user index; deployed, the node
config names the device's encrypted store (:mod:`client.on_device`). The private user embedding
lives in ``context.state`` between rounds (and in the store between runs): never in a reply.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, RecordDict
from flwr.client import ClientApp, NumPyClient

from client import local, on_device
from client.mods import fault_injection_mod, secagg_mod, user_clipping_mod
from client.policy import DevicePolicy
from shared.config import RunConfig
from shared.privacy import TRAINED, PrivacyHistory
from shared.split import UserData, split_for

PRIVATE_RECORD = "confide.private-embedding"
HISTORY_RECORD = "confide.privacy-history"  # the device's DP-SGD accountant, whole run


class DeviceClient(NumPyClient):
    def __init__(
        self,
        config: RunConfig,
        data: UserData,
        user_id: int,
        state: RecordDict,
        store: on_device.StoreRun | None = None,
        policy: DevicePolicy = local.NO_POLICY,
    ) -> None:
        self.run_config = config
        self.policy = policy  # the device owner's own ε cap (node config), never the server's
        self.data = data
        self.user_id = user_id
        self.state = state
        self.store = store  # deployed: the device store keeps state and model between runs

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
            self.policy,
        )
        self.state.array_records[PRIVATE_RECORD] = ArrayRecord(
            array_dict={k: Array(v) for k, v in result.private.items()}
        )
        self.state.array_records[HISTORY_RECORD] = ArrayRecord(
            array_dict={"steps": Array(result.history.to_array())}
        )
        if self.store is not None:
            self.store.save_fit(result, parameters)
        metrics: dict[str, float | str] = {}
        if result.status == TRAINED and not self.run_config.private_replies:
            metrics["loss"] = result.loss
        if self.run_config.dp_interaction:
            # Rounded: the exact ε and σ would reveal the device's sampling rate, hence its size.
            metrics.update(
                dp_status=result.status,
                dp_epsilon=round(result.epsilon, 1),
                dp_noise_multiplier=round(result.noise_multiplier, 1),
            )
        # Under DP or SecAgg+ every device weighs 1: its example count is private data.
        weight = 1 if self.run_config.private_replies else result.num_examples
        return result.global_arrays, weight, metrics

    def evaluate(self, parameters, config):
        loss, metrics = local.evaluate(
            self.run_config, self.data, self.user_id, parameters, self._private()
        )
        if self.store is not None:
            self.store.save_model(parameters)  # the latest global model, for recommending
        return loss, 1, metrics


def client_fn(context: Context):
    torch.set_num_threads(1)  # one thread per Ray actor: actors already fill the cores
    config = RunConfig.from_mapping(context.run_config)
    deployed = on_device.uses_store(context.node_config)
    policy = DevicePolicy.from_node_config(context.node_config, deployed=deployed)
    if deployed:
        run = on_device.StoreRun.open(config, context.node_config, context.run_id)
        run.restore(context.state, PRIVATE_RECORD, HISTORY_RECORD)
        return DeviceClient(config, run.data, run.user_id, context.state, run, policy).to_client()
    if "partition-id" not in context.node_config:
        raise ValueError(
            f"node config has neither {on_device.STORE_PATH} (a deployed device) nor "
            "partition-id (a simulation): start the SuperNode with --node-config "
            '\'store-path="/path/confide.db" store-key-file="/path/key"\''
        )
    user_id = int(context.node_config["partition-id"])
    split = split_for(config)
    if user_id >= split.num_users:
        raise ValueError(
            f"partition-id {user_id} has no user: the dataset has {split.num_users} users; "
            f"run with at most num-supernodes={split.num_users}"
        )
    data = split.user_data(user_id)
    return DeviceClient(config, data, user_id, context.state, policy=policy).to_client()


# Order matters: SecAgg+ must mask the update AFTER it is clipped (DESIGN.md §6).
app = ClientApp(client_fn=client_fn, mods=[fault_injection_mod, secagg_mod, user_clipping_mod])
