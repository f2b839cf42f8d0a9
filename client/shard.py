"""A simulated node that plays a shard of users (``cohort-size > 1``), on the cohort engine.

Each round the server names which of the shard's users it drew (``SHARD_USERS``). The node
trains them at once with :func:`client.cohort.train_shard`, which gives every user exactly the
round its own device would compute (own embedding, optimizer state, negatives, DP-SGD sampling,
noise, accountant and cap), keeps each user's state in its own file as a simulated device does
(:class:`client.state.FileState`), clips each user's update to S under user-level DP (what
:func:`client.mods.user_clipping_mod` does on a device), and replies with the SUM of the users'
weighted updates and the per-user facts the server records
(:func:`client.reply.shape_shard_fit_reply`).

What it protects: every user's guarantee is the one-user-per-node guarantee against the released
model (the same clipping, noise and accounting). Against the server it is weaker than one node
per user: the server sees the shard's sum in the clear (no SecAgg+ across shards yet: refused
by the config), which for a shard of one drawn user is that user's update. The node itself is
the simulation host, which holds every user's data anyway.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.client import NumPyClient

from client.cohort import ShardUser, fresh_private, train_shard
from client.noise import SimulatedDevicesNoise
from client.policy import DevicePolicy
from client.pooled import Member, pooled_round
from client.reply import (
    shape_pooled_shard_reply,
    shape_shard_evaluate_reply,
    shape_shard_fit_reply,
)
from client.shard_evaluation import evaluate_shard
from client.state import FileState
from client.training_round import TrainResult, declined_result
from shared.config import RunConfig
from shared.models import load_global, private_names
from shared.pooled import plan_pooled
from shared.privacy import clip_update
from shared.shards import shard_users
from shared.split import LeaveOneOut
from shared.wire import (
    CLIP_BIT,
    CLIP_NORM,
    CLIP_UNDER,
    NOISE_CLAMPED,
    PARTITION_ID,
    SERVER_ROUND,
    SHARD_USERS,
    TRAINED,
)


class ShardClient(NumPyClient):
    def __init__(
        self, config: RunConfig, split: LeaveOneOut, partition: int, policy: DevicePolicy
    ) -> None:
        if not config.out_dir:
            raise ValueError(
                "cohort-size > 1 keeps each user's state in the run directory: set out-dir "
                "(confide simulate sets it)"
            )
        self.run_config = config
        self.split = split
        self.partition = partition
        self.policy = policy
        self.users = shard_users(partition, config.cohort_size, split.num_users)

    def get_properties(self, config):
        return {PARTITION_ID: self.partition}

    def drawn(self, instructions) -> list[int]:
        """The users the server drew from this shard; a ValueError if it names others."""
        raw = instructions.get(SHARD_USERS)
        if not isinstance(raw, bytes) or len(raw) % 8:
            raise ValueError(f"{SHARD_USERS} must be int64 bytes of user ids")
        users = np.frombuffer(raw, dtype=np.int64).tolist()
        strangers = sorted(set(users) - set(self.users))
        if strangers or len(set(users)) != len(users):
            raise ValueError(
                f"the server named users {strangers or 'twice'} for shard {self.partition}, "
                f"which plays users {self.users.start}..{self.users.stop - 1}"
            )
        return users

    def state(self, user: int) -> FileState:
        return FileState.of_user(self.run_config.out_dir, user)

    def fit(self, parameters, config):
        server_round = int(config[SERVER_ROUND])
        users = self.drawn(config)
        states = [self.state(u).at_round(server_round) for u in users]
        shard = [
            ShardUser(u, self.split.user_data(u), s.private_embedding(), s.privacy_history())
            for u, s in zip(users, states, strict=True)
        ]
        if self.run_config.pooled:
            results, total = pooled_shard(
                self.run_config, shard, server_round, parameters, self.policy
            )
            for state, result in zip(states, results, strict=True):
                state.save_fit(result, parameters)
            return shape_pooled_shard_reply(self.run_config, users, results, total)
        results = train_shard(self.run_config, shard, server_round, parameters, self.policy)
        clip = config.get(CLIP_NORM)
        noise = SimulatedDevicesNoise.from_instructions(self.run_config, config, self.policy)
        updates, under = [], 0  # under: trained users within S (adaptive clipping's count)
        for user, state, result in zip(users, states, results, strict=True):
            state.save_fit(result, parameters)
            update = [
                np.asarray(new, dtype=np.float64) - old
                for new, old in zip(result.global_arrays, parameters, strict=True)
            ]
            if clip is not None:
                update, norm = clip_update(update, float(clip))
                under += int(result.status == TRAINED and norm <= float(clip))
            if noise is not None and result.status == TRAINED:
                update = noise.noised(update, float(clip), user, server_round)
            updates.append(update)
        total, weight, metrics = shape_shard_fit_reply(self.run_config, users, results, updates)
        if config.get(CLIP_BIT) and clip is not None:
            metrics = {**metrics, CLIP_UNDER: under}  # what each device's reply would say, summed
        if noise is not None:
            metrics = {**metrics, NOISE_CLAMPED: noise.clamped}
        return total, weight, metrics

    def evaluate(self, parameters, config):
        users = self.drawn(config)
        after_fit = int(config[SERVER_ROUND]) + 1  # the states as this round's fit left them
        shard = [
            ShardUser(
                u, self.split.user_data(u), self.state(u).at_round(after_fit).private_embedding()
            )
            for u in users
        ]
        evaluations = evaluate_shard(self.run_config, shard, parameters)
        return shape_shard_evaluate_reply(evaluations, self.policy.share_top_list)


def pooled_shard(
    config: RunConfig,
    users: list[ShardUser],
    server_round: int,
    global_params,
    policy: DevicePolicy,
) -> tuple[list[TrainResult], list[np.ndarray]]:
    """A pooled round (:mod:`client.pooled`) for the shard's drawn users at once: one model with
    a private row per user who trains, one pooled backward pass. Returns every user's result (a
    user at its budget declines, as its device would) and the global part of the trained users'
    clipped gradient sum."""
    policy.check_run(config)
    plan = plan_pooled(config)
    num_items = users[0].data.num_items if users else 0
    results: list[TrainResult | None] = [None] * len(users)
    privates = [
        dict(u.private) if u.private is not None else fresh_private(config, num_items, u.user_id)
        for u in users
    ]
    todo = []
    for i, user in enumerate(users):
        if policy.declines(config, plan.history_after(user.history)):
            results[i] = declined_result(
                config, user.data, global_params, privates[i], user.history
            )
        else:
            todo.append(i)
    if not todo:  # everyone drawn is at their budget: nothing is summed
        zeros = [np.zeros(np.shape(a), dtype=np.float64) for a in global_params]
        return [r for r in results if r is not None], zeros
    model = config.build_model(num_items, num_users=len(todo))
    load_global(model, global_params)
    params = dict(model.named_parameters())
    with torch.no_grad():  # each trained user's own private rows, one row each
        for row, i in enumerate(todo):
            for name in private_names(model):
                params[name][row] = torch.as_tensor(privates[i][name][0])
    members = [Member(row, users[i].user_id, users[i].data) for row, i in enumerate(todo)]
    total, loss = pooled_round(config, model, members, server_round, plan)
    for row, i in enumerate(todo):
        history = plan.history_after(users[i].history)
        results[i] = TrainResult(
            global_arrays=[],  # a shard sends the sum of its users' parts, not one model each
            private={
                name: params[name][row : row + 1].detach().numpy().copy()
                for name in private_names(model)
            },
            loss=loss,
            num_examples=len(users[i].data.train_items),
            history=history,
            epsilon=history.epsilon(config.dp_delta, config.dp_accountant),
            noise_multiplier=plan.noise_multiplier,
        )
    return [r for r in results if r is not None], [-t for t in total]
