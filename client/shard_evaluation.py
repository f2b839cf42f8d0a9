"""A shard's evaluation at once: every user's evaluation as its own device computes it.

:func:`client.training_round.evaluate` per user rebuilds the model, re-fits the private
embedding for ``personalize-epochs`` one user at a time, scores the catalogue, and derives the
item vectors for diversity again. Here the global model is loaded once per shard and shared (not
copied per user: only the private rows have a user dimension); the re-fit runs for a chunk of
users at once (``torch.func.vmap`` over their private rows, each user with its own Adam state,
negatives and batch order from :func:`shared.streams.personalize_rng`); each user's scores of
every item come from one batched call and serve all four metrics, the loss and the top 10; and
the item vectors are computed once. The results equal the per-user path to float tolerance
(tests/client/test_shard_evaluation.py); the re-fit is not kept, as on a device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from client.cohort import (
    ShardUser,
    StackedOptimizer,
    fresh_private,
    plain_batches,
)
from client.training_round import Evaluation
from shared.beyond_accuracy import intra_list_diversity
from shared.config import RunConfig
from shared.item_vectors import item_tables, item_vectors
from shared.models import load_global, private_names
from shared.streams import personalize_rng
from shared.training import loss_from_scores, ranking_from_scores
from shared.wire import DIVERSITY10

# Users re-fitted per kernel call: only their private rows are stacked (the global tables are
# shared), so a chunk can be larger than training's; 32 was fastest on ML-100K (27 ms a user
# against 32 ms at 16 and 39 ms at 128, 2 cores, 128 users, 20 re-fit epochs).
EVAL_CHUNK_USERS = 32


def evaluate_shard(
    config: RunConfig,
    users: Sequence[ShardUser],
    global_params: Sequence[np.ndarray],
    chunk_users: int = EVAL_CHUNK_USERS,
) -> list[Evaluation]:
    """Every user's :class:`Evaluation`, in the order of ``users``."""
    if not users:
        return []
    num_items = users[0].data.num_items
    model = config.build_model(num_items, seed=config.seed)  # the layout; rows come from states
    load_global(model, global_params)
    model.eval()
    private = private_names(model)
    shared = {n: p.detach() for n, p in model.named_parameters() if n not in private}
    vectors = item_vectors(model, num_items) if item_tables(model, num_items) else None
    out: list[Evaluation | None] = [None] * len(users)
    order = sorted(range(len(users)), key=lambda i: len(users[i].data.train_items))
    for start in range(0, len(order), chunk_users):
        chunk = order[start : start + chunk_users]
        mine = [users[i] for i in chunk]
        rows = _private_rows(config, mine, private, num_items)
        if config.personalize_epochs:
            _personalize(config, model, shared, rows, mine)
        scores = _score_all(model, shared, rows, num_items)
        for i, user, user_scores in zip(chunk, mine, scores, strict=True):
            metrics, top = ranking_from_scores(user_scores, user.data)
            if vectors is not None:
                metrics[DIVERSITY10] = intra_list_diversity(top[None], vectors)
            out[i] = Evaluation(loss=loss_from_scores(user_scores, user.data), metrics=metrics,
                                top=top)  # fmt: skip
    return [e for e in out if e is not None]


def _private_rows(config, users, names, num_items) -> dict[str, torch.Tensor]:
    """The users' private rows stacked ``[users, 1, ...]``: saved, or fresh from their seed."""
    privates = [
        u.private if u.private is not None else fresh_private(config, num_items, u.user_id)
        for u in users
    ]
    return {
        n: torch.as_tensor(np.stack([np.asarray(p[n], dtype=np.float32) for p in privates]))
        for n in names
    }


def _personalize(config, model, shared, rows, users) -> None:
    """:func:`client.training_round.personalize` for every user of the chunk at once."""

    def loss(private, items, labels, mask):
        logits = functional_call(model, {**shared, **private}, (torch.zeros_like(items), items))
        bce = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return (bce * mask).sum() / mask.sum().clamp(min=1)

    step = vmap(grad(loss))
    optimizer = StackedOptimizer("adam", rows, config.personalize_learning_rate)
    for epoch in range(config.personalize_epochs):
        batches = plain_batches(
            config,
            users,
            0,
            epoch,
            "cpu",
            rng_for=lambda u, e=epoch: personalize_rng(config.seed, u, e),
        )
        for t in range(batches.items.shape[1]):
            grads = step(rows, batches.items[:, t], batches.labels[:, t], batches.mask[:, t])
            optimizer.step(grads, batches.steps > t)


@torch.no_grad()
def _score_all(model, shared, rows, num_items) -> np.ndarray:
    """``[users, num_items]`` logits: each user's private rows against the whole catalogue."""
    items = torch.arange(num_items)
    users = torch.zeros_like(items)
    score = vmap(lambda private: functional_call(model, {**shared, **private}, (users, items)))
    return score(rows).numpy().astype(np.float64)
