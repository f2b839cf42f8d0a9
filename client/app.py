"""ClientApp: Flower glue (legacy NumPyClient route, SecAgg+-capable) over the device modules.

One supernode is one user: in simulation ``partition-id`` = dense user index and the state lives in
the run directory (:class:`client.state.FileState`; Flower's node state without one); deployed, the
node config names the device's encrypted store (:mod:`client.store_adapter`), which keeps the state
between runs. A round is :mod:`client.training_round`; what its reply may reveal is
:mod:`client.reply`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from flwr.app import Context
from flwr.client import ClientApp, NumPyClient

from client import training_round
from client.mods import fault_injection_mod, secagg_mod, user_clipping_mod
from client.poisoning_mod import poisoning_mod
from client.policy import DevicePolicy
from client.reply import shape_evaluate_reply, shape_fit_reply
from client.state import ContextState, DeviceState, FileState
from client.store_adapter import STORE_PATH, StoreRun, uses_store
from shared.config import RunConfig
from shared.records import DEVICES_DIR
from shared.split import UserData, split_for
from shared.wire import SERVER_ROUND


class DeviceClient(NumPyClient):
    def __init__(
        self,
        config: RunConfig,
        data: UserData,
        user_id: int,
        state: DeviceState,
        policy: DevicePolicy = training_round.NO_POLICY,
    ) -> None:
        self.run_config = config
        self.policy = policy  # the device owner's own ε cap (node config), never the server's
        self.data = data
        self.user_id = user_id
        self.state = state

    def state_at(self, server_round: int) -> DeviceState:
        """The state as round ``server_round`` must see it (a :class:`FileState` keeps versions
        by round, so a round rerun after a resume starts where its first attempt did)."""
        at_round = getattr(self.state, "at_round", None)
        return self.state if at_round is None else at_round(server_round)

    def fit(self, parameters, config):
        server_round = int(config[SERVER_ROUND])
        state = self.state_at(server_round)
        result = training_round.train(
            self.run_config,
            self.data,
            self.user_id,
            server_round,
            parameters,
            state.private_embedding(),
            state.privacy_history(),
            self.policy,
        )
        state.save_fit(result, parameters)
        weight, metrics = shape_fit_reply(self.run_config, result)
        return result.global_arrays, weight, metrics

    def evaluate(self, parameters, config):
        state = self.state_at(int(config[SERVER_ROUND]) + 1)  # after this round's fit
        evaluation = training_round.evaluate(
            self.run_config, self.data, self.user_id, parameters, state.private_embedding()
        )
        self.state.save_model(parameters)  # the latest global model, for recommending
        return shape_evaluate_reply(evaluation, self.policy.share_top_list)


def client_fn(context: Context):
    torch.set_num_threads(1)  # one thread per Ray actor: actors already fill the cores
    config = RunConfig.from_mapping(context.run_config)
    deployed = uses_store(context.node_config)
    policy = DevicePolicy.from_node_config(context.node_config, deployed=deployed)
    if deployed:
        run = StoreRun.open(config, context.node_config, context.run_id, context.state)
        return DeviceClient(config, run.data, run.user_id, run.state, policy).to_client()
    user_id, data = simulated_user(config, context.node_config)
    return DeviceClient(
        config, data, user_id, simulated_state(config, context, user_id), policy
    ).to_client()


def simulated_state(config: RunConfig, context: Context, user_id: int) -> DeviceState:
    """A simulated device's state: its own file in the run directory, so that a resumed
    simulation continues it (docs/design.md §6); in Flower's node state when the run has no
    directory the devices can see (``out-dir`` unset: ``flwr run .`` without confide)."""
    if config.out_dir:
        return FileState(Path(config.out_dir) / DEVICES_DIR / f"user-{user_id}.npz")
    return ContextState(context.state)


def simulated_user(config: RunConfig, node_config: Mapping[str, object]) -> tuple[int, UserData]:
    """The user a simulated node plays (its ``partition-id``: a dense user index) and its data."""
    if "partition-id" not in node_config:
        raise ValueError(
            f"node config has neither {STORE_PATH} (a deployed device) nor "
            "partition-id (a simulation): start the SuperNode with --node-config "
            '\'store-path="/path/confide.db" store-key-file="/path/key"\''
        )
    user_id = int(node_config["partition-id"])
    split = split_for(config)
    if user_id >= split.num_users:
        raise ValueError(
            f"partition-id {user_id} has no user: the dataset has {split.num_users} users; "
            f"run with at most num-supernodes={split.num_users}"
        )
    return user_id, split.user_data(user_id)


# Order matters: SecAgg+ must mask the update AFTER it is clipped (docs/design.md §8), and the fault
# hook must see every message first, so that a deployed device refuses it before anything runs.
# The poisoning audit's attackers replace their update outside the clipping mod (they skip it).
app = ClientApp(
    client_fn=client_fn,
    mods=[fault_injection_mod, secagg_mod, poisoning_mod, user_clipping_mod],
)
