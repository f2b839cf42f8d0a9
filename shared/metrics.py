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
