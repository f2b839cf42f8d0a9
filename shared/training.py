"""Plain PyTorch training and evaluation, shared by the clients and the centralized baseline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from shared.beyond_accuracy import beyond_accuracy, item_shares, top_k_unseen
from shared.metrics import full_ranking_metrics, sampled_metrics, shared_score_metrics
from shared.models import Recommender
from shared.split import LeaveOneOut, UserData
from shared.wire import EVAL_METRICS, FULL_HR10, FULL_NDCG10, HR10, NDCG10


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}: choose adam or sgd")


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    users: np.ndarray,
    items: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
) -> float:
    """One shuffled pass of binary cross-entropy over (user, item, label) rows; mean loss."""
    model.train()
    order = rng.permutation(len(items))
    users_t = torch.as_tensor(users[order], dtype=torch.long)
    items_t = torch.as_tensor(items[order], dtype=torch.long)
    labels_t = torch.as_tensor(labels[order], dtype=torch.float32)
    loss_fn = nn.BCEWithLogitsLoss()
    total = 0.0
    for start in range(0, len(order), batch_size):
        batch = slice(start, start + batch_size)
        optimizer.zero_grad()
        loss = loss_fn(model(users_t[batch], items_t[batch]), labels_t[batch])
        loss.backward()
        optimizer.step()
        total += loss.item() * len(labels_t[batch])
    return total / max(len(order), 1)


@torch.no_grad()
def evaluate_user(model: Recommender, user: int, data: UserData, k: int = 10) -> dict[str, float]:
    """HR/NDCG@K of one user's held-out item against its negatives and against all unseen items."""
    return evaluate_user_ranking(model, user, data, k)[0]


@torch.no_grad()
def evaluate_user_ranking(
    model: Recommender, user: int, data: UserData, k: int = 10
) -> tuple[dict[str, float], np.ndarray]:
    """:func:`evaluate_user`'s metrics and, from the same scores, the user's top ``k`` over the
    items they did not train on (``full_hr10``'s candidates), best first."""
    model.eval()
    return ranking_from_scores(model.score_all_items(user).numpy(), data, k)


def ranking_from_scores(
    scores: np.ndarray, data: UserData, k: int = 10
) -> tuple[dict[str, float], np.ndarray]:
    """The four metrics and the top ``k`` unseen items from one user's scores of every item."""
    hr, nd = sampled_metrics(scores[data.test_item], scores[data.eval_negatives], k)
    full_hr, full_nd = full_ranking_metrics(scores, data.test_item, data.train_items, k)
    metrics = {HR10: hr, NDCG10: nd, FULL_HR10: full_hr, FULL_NDCG10: full_nd}
    return metrics, top_k_unseen(scores, data.train_items, k)


def loss_from_scores(scores: np.ndarray, data: UserData) -> float:
    """:func:`evaluation_loss` from the user's scores of every item (the same logits)."""
    logits = torch.as_tensor(
        np.concatenate([[scores[data.test_item]], scores[data.eval_negatives]])
    )
    labels = torch.zeros(len(logits), dtype=logits.dtype)
    labels[0] = 1.0
    return float(nn.functional.binary_cross_entropy_with_logits(logits, labels))


def evaluation_loss(model: Recommender, user: int, data: UserData) -> float:
    """BCE of the held-out item (label 1) and its sampled negatives (label 0)."""
    with torch.no_grad():
        items = torch.as_tensor(np.concatenate([[data.test_item], data.eval_negatives]))
        labels = torch.zeros(len(items))
        labels[0] = 1.0
        logits = model(torch.full_like(items, user), items)
        return float(nn.functional.binary_cross_entropy_with_logits(logits, labels))


def evaluate_users(
    model: Recommender, users: Sequence[int], data: Sequence[UserData], k: int = 10
) -> dict[str, float]:
    """Mean metrics over users (``users[i]`` is the model's row for ``data[i]``)."""
    return evaluate_users_with_lists(model, users, data, k)[0]


def evaluate_users_with_lists(
    model: Recommender, users: Sequence[int], data: Sequence[UserData], k: int = 10
) -> tuple[dict[str, float], np.ndarray]:
    """:func:`evaluate_users` and every user's top ``k`` unseen items, from one scoring each."""
    rows = [evaluate_user_ranking(model, u, d, k) for u, d in zip(users, data, strict=True)]
    means = {key: float(np.mean([r[0][key] for r in rows])) for key in EVAL_METRICS}
    return means, np.stack([r[1] for r in rows])


def popularity_scores(split: LeaveOneOut) -> np.ndarray:
    """Each item's number of training interactions: the ranking a model must beat."""
    return np.bincount(split.train_items, minlength=split.num_items).astype(np.float64)


def evaluate_popularity(split: LeaveOneOut, k: int = 10) -> dict[str, float]:
    """Mean metrics of ranking every user's items by training popularity.

    Evaluated with the models' protocol (the same held-out items, evaluation negatives, ties
    against the true item, full ranking over unseen items), so it is a fair reference: a test
    set that is a biased slice of the catalogue shows up as popularity scoring below random.
    """
    return evaluate_shared_scores(split, popularity_scores(split), k)


def evaluate_shared_scores(split: LeaveOneOut, scores: np.ndarray, k: int = 10) -> dict[str, float]:
    """Mean metrics of one score per item, the same for every user (a non-personalized ranking)."""
    metrics = shared_score_metrics(
        scores,
        split.test_item,
        split.eval_negatives,
        split.train_indptr,
        split.train_items,
        k,
    )
    return {key: float(np.mean(m)) for key, m in zip(EVAL_METRICS, metrics, strict=True)}


def popularity_lists(split: LeaveOneOut, k: int = 10) -> np.ndarray:
    """The popularity ranking's top ``k`` for every user, over the same candidates."""
    scores = popularity_scores(split)
    return np.stack(
        [top_k_unseen(scores, split.user_train_items(u), k) for u in range(split.num_users)]
    )


def beyond_accuracy_of(
    lists: np.ndarray, split: LeaveOneOut, vectors: np.ndarray | None
) -> dict[str, float | None]:
    """Coverage, novelty, diversity and exposure Gini of ``lists`` on ``split``."""
    shares = item_shares(split.train_indptr, split.train_items, split.num_items)
    return beyond_accuracy(lists, split.num_items, shares, split.num_users, vectors)
