"""One round on one device, in plain PyTorch (no Flower): train locally, or evaluate.

The device's model has a single user row (index 0): its own private embedding. The private
embedding is created from a per-user seed the first time and is otherwise restored from the
device state (:mod:`client.state`), so it is trained across rounds and never reset. What a round
returns is everything it computed; what of it may leave the device is decided elsewhere, in one
place (:mod:`client.reply`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from client.dp import plan_round, train_private
from client.policy import DevicePolicy
from client.pooled import Member, pooled_round
from shared.beyond_accuracy import intra_list_diversity
from shared.config import RunConfig
from shared.item_vectors import item_tables, item_vectors
from shared.models import (
    Recommender,
    global_arrays,
    load_global,
    load_private,
    private_names,
    private_state,
)
from shared.pooled import plan_pooled
from shared.privacy import PrivacyHistory, clip_update
from shared.sequence_model import SASRec
from shared.sequence_training import train_sequence_epoch, user_examples
from shared.split import UserData, training_examples
from shared.streams import (
    device_torch_seed,
    personalize_rng,
    secret_seed,
    train_negatives_rng,
    user_embedding_seed,
)
from shared.training import evaluate_user_ranking, evaluation_loss, make_optimizer, train_epoch
from shared.wire import BUDGET_EXHAUSTED, DIVERSITY10, TRAINED

LOCAL_USER = 0  # the device's own row in its one-user model
POOLED_NORM_MARGIN = 0.999  # under max-update-norm after the reply's float32 rounding
NO_HISTORY = PrivacyHistory()
NO_POLICY = DevicePolicy()


@dataclass(frozen=True)
class TrainResult:
    """Everything one round computed. ``private`` never leaves the device; what of the rest may
    is decided in :func:`client.reply.shape_fit_reply`."""

    global_arrays: list[np.ndarray]
    private: dict[str, np.ndarray]
    loss: float
    num_examples: int
    status: str = TRAINED
    history: PrivacyHistory = NO_HISTORY  # the device's DP-SGD steps, whole run
    epsilon: float = 0.0  # interaction-level ε after this round (0 without DP)
    noise_multiplier: float = 0.0  # σ of this round's DP-SGD steps (0 without DP)


def device_model(
    config: RunConfig,
    num_items: int,
    user_id: int,
    global_params: Sequence[np.ndarray],
    private: Mapping[str, np.ndarray] | None,
    data_sequence: np.ndarray | None = None,
) -> Recommender:
    """The global model plus this user's private rows (fresh, seeded by user, if none yet), or,
    for a sequence model, the user's training items in order (``data_sequence``)."""
    model = config.build_model(num_items, seed=user_embedding_seed(config.seed, user_id))
    load_global(model, global_params)
    if private is not None:
        load_private(model, private)
    if isinstance(model, SASRec):  # its user state: the device's own sequence, oldest first
        if data_sequence is None:
            raise ValueError(
                "model sasrec needs the device's items in time order (data_sequence); this caller "
                "passed none: pass the store's items oldest first, or use an NCF model"
            )
        model.set_sequence(LOCAL_USER, data_sequence)
    return model


def _seed_round(config: RunConfig, user_id: int, server_round: int) -> None:
    """Seed torch's generator, which Opacus draws the DP noise and the Poisson batches from.

    Under interaction-level DP the seed is secret (64 bits of OS entropy, fresh every round): one
    derived from the run's seed, which the server chose, would let the server replay the noise
    and subtract it. Only ``dp-reproducible-noise`` (research simulations) derives it from the
    run seed. Torch's generator is still no CSPRNG (Opacus' secure mode needs torchcsprng, which
    has no build for torch 2.13); the server sees its outputs only under the update they noise.
    """
    if config.dp_interaction and not config.dp_reproducible_noise:
        torch.manual_seed(secret_seed(64))
        return
    torch.manual_seed(device_torch_seed(config.seed, user_id, server_round))


def train(
    config: RunConfig,
    data: UserData,
    user_id: int,
    server_round: int,
    global_params: Sequence[np.ndarray],
    private: Mapping[str, np.ndarray] | None,
    history: PrivacyHistory = NO_HISTORY,
    policy: DevicePolicy = NO_POLICY,
) -> TrainResult:
    """Local epochs over the device's positives and freshly sampled negatives.

    With ``dp-interaction`` the epochs run as DP-SGD and ``history`` (the device's accountant)
    grows; a device whose ε would pass ``dp-epsilon-cap`` or its own ``policy`` cap declines and
    changes nothing. A policy with a cap refuses non-private training (:class:`PolicyViolation`).
    """
    policy.check_run(config)
    model = device_model(config, data.num_items, user_id, global_params, private, data.train_items)
    _seed_round(config, user_id, server_round)
    if config.dp_interaction:
        dp_round = _train_pooled if config.pooled else _train_dp
        return dp_round(config, model, data, user_id, server_round, global_params, history, policy)
    lr = config.local_learning_rate(server_round)
    optimizer = make_optimizer(config.optimizer, model.parameters(), lr)
    losses = []
    for epoch in range(config.local_epochs):
        rng = train_negatives_rng(config.seed, user_id, server_round, epoch)
        epoch_fn = _sequence_epoch if isinstance(model, SASRec) else _local_epoch
        losses.append(epoch_fn(config, model, optimizer, data, rng))
    return TrainResult(
        global_arrays=global_arrays(model),
        private=private_state(model),
        loss=float(np.mean(losses)),
        num_examples=len(data.train_items),
    )


def _train_dp(
    config: RunConfig,
    model: Recommender,
    data: UserData,
    user_id: int,
    server_round: int,
    global_params: Sequence[np.ndarray],
    history: PrivacyHistory,
    policy: DevicePolicy,
) -> TrainResult:
    plan = plan_round(config, len(data.train_items))
    if policy.declines(config, plan.history_after(history)):
        return declined_result(config, data, global_params, private_state(model), history)
    loss, history = train_private(config, model, data, user_id, server_round, plan, history)
    return TrainResult(
        global_arrays=global_arrays(model),
        private=private_state(model),
        loss=loss,
        num_examples=len(data.train_items),
        history=history,
        epsilon=history.epsilon(config.dp_delta, config.dp_accountant),
        noise_multiplier=plan.noise_multiplier,
    )


def declined_result(
    config: RunConfig,
    data: UserData,
    global_params: Sequence[np.ndarray],
    private: Mapping[str, np.ndarray],
    history: PrivacyHistory,
) -> TrainResult:
    """A device (or a shard's user) at its budget: trains nothing, sends the model back
    unchanged and keeps its embedding and accountant as they were."""
    return TrainResult(
        global_arrays=[np.array(a, copy=True) for a in global_params],
        private={k: np.array(v, copy=True) for k, v in private.items()},
        loss=float("nan"),
        num_examples=len(data.train_items),
        status=BUDGET_EXHAUSTED,
        history=history,
        epsilon=history.epsilon(config.dp_delta, config.dp_accountant),
    )


def _train_pooled(
    config: RunConfig,
    model: Recommender,
    data: UserData,
    user_id: int,
    server_round: int,
    global_params: Sequence[np.ndarray],
    history: PrivacyHistory,
    policy: DevicePolicy,
) -> TrainResult:
    """One pooled round (:mod:`client.pooled`): what leaves the device is the global model minus
    its clipped gradient sum, so the update the server computes (new - old) is minus that sum,
    and the server's mean of updates is a gradient step; the noise is added to the cohort's sum."""
    plan = plan_pooled(config)
    after = plan.history_after(history)
    if policy.declines(config, after):
        return declined_result(config, data, global_params, private_state(model), history)
    member = Member(row=LOCAL_USER, user_id=user_id, data=data)
    total, loss = pooled_round(config, model, [member], server_round, plan)
    # A sum of many clipped gradients may pass the server's max-update-norm, and a rejection that
    # depends on the data would change the denominator (devices that trained). Projecting the
    # sum onto that ball is 1-Lipschitz, so one interaction still moves it by at most C.
    total, _ = clip_update(total, POOLED_NORM_MARGIN * config.max_update_norm)
    return TrainResult(
        global_arrays=[  # in the model's dtype, as every reply's arrays are
            (np.asarray(g, dtype=np.float64) - t).astype(g.dtype)
            for g, t in zip(global_arrays(model), total, strict=True)
        ],
        private=private_state(model),
        loss=loss,
        num_examples=len(data.train_items),
        history=after,
        epsilon=after.epsilon(config.dp_delta, config.dp_accountant),
        noise_multiplier=plan.noise_multiplier,
    )


@dataclass(frozen=True)
class Evaluation:
    """Everything one evaluation computed; what of it may leave the device is decided in
    :func:`client.reply.shape_evaluate_reply`."""

    loss: float
    metrics: dict[str, float]  # HR/NDCG@10 sampled and full, and diversity10 where it exists
    top: np.ndarray  # the device's top 10 over the items it did not train on, best first


def evaluate(
    config: RunConfig,
    data: UserData,
    user_id: int,
    global_params: Sequence[np.ndarray],
    private: Mapping[str, np.ndarray] | None,
) -> Evaluation:
    """Loss, HR/NDCG@10 (sampled and full ranking) of the device's held-out item, and its top 10.

    With ``personalize-epochs`` the device first re-fits its private embedding to the current
    global model on its own training data, as it would before recommending: an embedding last
    trained many rounds ago no longer matches the global towers. The re-fit is not kept.
    The list's diversity is computed here, from the global model's item tables (public), so
    that a device that keeps its list to itself can still send it.
    """
    model = device_model(config, data.num_items, user_id, global_params, private, data.train_items)
    if config.personalize_epochs:
        personalize(config, model, data, user_id)
    with torch.no_grad():
        loss = evaluation_loss(model, LOCAL_USER, data)
        metrics, top = evaluate_user_ranking(model, LOCAL_USER, data)
    if item_tables(model, data.num_items):
        vectors = item_vectors(model, data.num_items)
        metrics[DIVERSITY10] = intra_list_diversity(top[None], vectors)
    return Evaluation(loss=loss, metrics=metrics, top=top)


def personalize(config: RunConfig, model: Recommender, data: UserData, user_id: int) -> None:
    """Train only the private (user) parameters, global ones frozen, on the device's data."""
    names = set(private_names(model))
    private = [p for n, p in model.named_parameters() if n in names]
    if not private:  # a sequence model: its user state is data, there is nothing to re-fit
        return
    for p in model.parameters():
        p.requires_grad_(False)
    for p in private:
        p.requires_grad_(True)
    optimizer = make_optimizer("adam", private, config.personalize_learning_rate)
    for epoch in range(config.personalize_epochs):
        _local_epoch(config, model, optimizer, data, personalize_rng(config.seed, user_id, epoch))


def _local_epoch(
    config: RunConfig,
    model: Recommender,
    optimizer: torch.optim.Optimizer,
    data: UserData,
    rng: np.random.Generator,
) -> float:
    """One pass over the device's positives with freshly sampled negatives; mean loss."""
    items, labels = training_examples(data.train_items, data.num_items, config.train_negatives, rng)
    users = np.full(len(items), LOCAL_USER)
    return train_epoch(model, optimizer, users, items, labels, config.batch_size, rng)


def _sequence_epoch(
    config: RunConfig,
    model: SASRec,
    optimizer: torch.optim.Optimizer,
    data: UserData,
    rng: np.random.Generator,
) -> float:
    """One pass of next-item prediction over the device's own sequence; mean loss."""
    inputs, positives, negatives = user_examples(
        data.train_items, data.num_items, model.max_length, rng
    )
    return train_sequence_epoch(
        model, optimizer, inputs, positives, negatives, config.batch_size, rng
    )
