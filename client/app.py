"""ClientApp: Flower glue (legacy NumPyClient route, SecAgg+-capable) over the device modules.

One supernode is one user: in simulation ``partition-id`` = dense user index and the state lives in
the run directory (:class:`client.state.FileState`; Flower's node state without one); deployed, the
node config names the device's encrypted store (:mod:`client.store_adapter`), which keeps the state
between runs. A round is :mod:`client.training_round`; what its reply may reveal is
:mod:`client.reply`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from flwr.app import Context
from flwr.client import ClientApp, NumPyClient

from client import training_round
from client.mods import fault_injection_mod, secagg_mod, user_clipping_mod
from client.poisoning_mod import poisoning_mod
from client.policy import DevicePolicy
from client.reply import shape_evaluate_reply, shape_fit_reply
from client.shard import ShardClient
from client.state import ContextState, DeviceState, FileState
from client.store_adapter import STORE_PATH, StoreRun, uses_store
from shared.config import RunConfig
from shared.shards import shard_count
from shared.split import UserData, split_for
from shared.wire import PARTITION_ID, SERVER_ROUND


class DeviceClient(NumPyClient):
    def __init__(
        self,
        config: RunConfig,
        data: UserData,
        user_id: int,
        state: DeviceState,
        policy: DevicePolicy = training_round.NO_POLICY,
        partition: int | None = None,
    ) -> None:
        self.run_config = config
        self.partition = partition  # a simulated node's partition id (its user); None deployed
        self.policy = policy  # the device owner's own ε cap (node config), never the server's
        self.data = data
        self.user_id = user_id
        self.state = state

    def get_properties(self, config):
        """What the node says of itself when the server first asks (server/population.py): a
        simulated node its partition id, which the server's federation assigned; a deployed
        device nothing."""
        return {} if self.partition is None else {PARTITION_ID: self.partition}

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
    if config.cohort_size > 1:  # the node plays a shard of users, on the cohort engine
        partition = simulated_partition(config, context.node_config)
        return ShardClient(config, split_for(config), partition, policy).to_client()
    user_id, data = simulated_user(config, context.node_config)
    state = simulated_state(config, context, user_id)
    return DeviceClient(config, data, user_id, state, policy, partition=user_id).to_client()


def simulated_state(config: RunConfig, context: Context, user_id: int) -> DeviceState:
    """A simulated device's state: its own file in the run directory, so that a resumed
    simulation continues it (docs/design.md §6); in Flower's node state when the run has no
    directory the devices can see (``out-dir`` unset: ``flwr run .`` without confide)."""
    if config.out_dir:
        return FileState.of_user(config.out_dir, user_id)
    return ContextState(context.state)


def simulated_partition(config: RunConfig, node_config: Mapping[str, object]) -> int:
    """A simulated node's ``partition-id``: a dense user index, or its shard's (cohort-size > 1)."""
    if PARTITION_ID not in node_config:
        raise ValueError(
            f"node config has neither {STORE_PATH} (a deployed device) nor "
            "partition-id (a simulation): start the SuperNode with --node-config "
            '\'store-path="/path/confide.db" store-key-file="/path/key"\''
        )
    partition = int(node_config[PARTITION_ID])
    users = split_for(config).num_users
    nodes = shard_count(users, config.cohort_size)
    if partition >= nodes:
        raise ValueError(
            f"partition-id {partition} has no user: the dataset has {users} users"
            + (f" in shards of {config.cohort_size}" if config.cohort_size > 1 else "")
            + f"; run with at most num-supernodes={nodes}"
        )
    return partition


def simulated_user(config: RunConfig, node_config: Mapping[str, object]) -> tuple[int, UserData]:
    """The user a simulated node plays (its ``partition-id``: a dense user index) and its data."""
    user_id = simulated_partition(config, node_config)
    return user_id, split_for(config).user_data(user_id)


# Order matters: SecAgg+ must mask the update AFTER it is clipped (docs/design.md §8), and the fault
# hook must see every message first, so that a deployed device refuses it before anything runs.
# The poisoning audit's attackers replace their update outside the clipping mod (they skip it).
app = ClientApp(
    client_fn=client_fn,
    mods=[fault_injection_mod, secagg_mod, poisoning_mod, user_clipping_mod],
)
