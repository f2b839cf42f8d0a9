"""Top-K ranking metrics: HR@K and NDCG@K with ties counted against the true item.

A tie is a loss for the true item, as in the NCF reference ``evaluate.py`` (which appends the
true item last and takes ``heapq.nlargest``): a model that scores every item the same gets
HR@10 = 0, not 1.
"""

from __future__ import annotations

import math

import numpy as np


def rank_of_true(true_score: float, other_scores: np.ndarray) -> int:
    """0-based rank of the true item: the number of other items scored at least as high."""
    return int(np.count_nonzero(np.asarray(other_scores) >= true_score))


def hit_ratio(rank: int, k: int = 10) -> float:
    return 1.0 if rank < k else 0.0


def ndcg(rank: int, k: int = 10) -> float:
    return 1.0 / math.log2(rank + 2) if rank < k else 0.0


def sampled_metrics(
    true_score: float, negative_scores: np.ndarray, k: int = 10
) -> tuple[float, float]:
    """(HR@K, NDCG@K) of the true item ranked against sampled negatives."""
    rank = rank_of_true(true_score, negative_scores)
    return hit_ratio(rank, k), ndcg(rank, k)


def full_ranking_metrics(
    all_scores: np.ndarray, true_item: int, train_items: np.ndarray, k: int = 10
) -> tuple[float, float]:
    """(HR@K, NDCG@K) of the true item ranked against every item not in the user's training set."""
    candidates = np.asarray(all_scores, dtype=np.float64).copy()
    candidates[train_items] = -np.inf  # seen items are not recommended
    true_score = candidates[true_item]
    candidates[true_item] = -np.inf
    rank = rank_of_true(true_score, candidates[np.isfinite(candidates)])
    return hit_ratio(rank, k), ndcg(rank, k)


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Average per-user metric dicts (every row has the same keys)."""
    if not rows:
        return {}
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def random_hit_ratio(num_negatives: int, k: int = 10) -> float:
    """Expected HR@K of a random ranking of the true item among ``num_negatives``: the line any
    baseline must clear (0.1 for 99 negatives)."""
    return min(k, num_negatives + 1) / (num_negatives + 1)


def shared_score_metrics(
    scores: np.ndarray,
    test_item: np.ndarray,
    eval_negatives: np.ndarray,
    train_indptr: np.ndarray,
    train_items: np.ndarray,
    k: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-user (HR, NDCG, full HR, full NDCG)@K when every user gets the same item scores.

    The same protocol as :func:`sampled_metrics` and :func:`full_ranking_metrics` (ties against
    the true item; the full ranking leaves out the user's training items), vectorised: a
    non-personal ranking such as popularity is scored for a million users in seconds.
    """
    scores = np.asarray(scores, dtype=np.float64)
    true = scores[test_item]
    sampled_rank = np.count_nonzero(scores[eval_negatives] >= true[:, None], axis=1)
    ordered = np.sort(scores)
    at_least = len(scores) - np.searchsorted(ordered, true, side="left") - 1  # minus the true item
    counts = np.diff(train_indptr)
    train_owner = np.repeat(np.arange(len(test_item)), counts)
    seen_at_least = np.bincount(
        train_owner,
        weights=scores[train_items] >= true[train_owner],
        minlength=len(test_item),
    ).astype(np.int64)
    full_rank = at_least - seen_at_least

    def hr_ndcg(rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hit = rank < k
        return hit.astype(np.float64), np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)

    return (*hr_ndcg(sampled_rank), *hr_ndcg(full_rank))
