"""Beyond accuracy: what the top-10 lists do to the catalogue (coverage, novelty, diversity,
exposure concentration). Pure NumPy over the lists; no model, no I/O.

A "list" is one user's top K items from the full ranking over the items they did not train on
(the candidates of ``full_hr10``), best first. The four figures (``coverage10``, ``novelty10``,
``diversity10``, ``exposure_gini10``):

- coverage: distinct recommended items / catalogue size;
- novelty: mean self-information ``-log2 p_i`` of recommended items, ``p_i`` the share of
  training users who interacted with item i (an item no training user has gets ``p = 1/users``,
  as if one had: self-information stays finite and ranks it most novel);
- intra-list diversity: mean over lists of the mean pairwise ``1 - cos`` of the list's items,
  cosines from :mod:`shared.item_vectors` (the model's public item tables);
- exposure Gini: Gini coefficient of how often each catalogue item is shown, every item
  counted (never shown = 0): 0 when every item is shown equally often, towards 1 when a few
  items take all the exposure (the popularity ranking's filter bubble).
"""

from __future__ import annotations

import numpy as np

from shared.wire import DIVERSITY10

COVERAGE10 = "coverage10"
NOVELTY10 = "novelty10"
EXPOSURE_GINI10 = "exposure_gini10"
BEYOND_ACCURACY = (COVERAGE10, NOVELTY10, DIVERSITY10, EXPOSURE_GINI10)


def coverage(lists: np.ndarray, num_items: int) -> float:
    """Share of the catalogue that appears in at least one list."""
    return len(np.unique(lists)) / num_items


def item_shares(train_indptr: np.ndarray, train_items: np.ndarray, num_items: int) -> np.ndarray:
    """``p_i``: share of users whose training items include i (each user counts an item once)."""
    users = len(train_indptr) - 1
    owners = np.repeat(np.arange(users), np.diff(train_indptr))
    distinct = np.unique(owners * num_items + train_items) % num_items
    return np.bincount(distinct, minlength=num_items) / users


def novelty(lists: np.ndarray, shares: np.ndarray, num_users: int) -> float:
    """Mean self-information (bits) of the recommended items."""
    p = np.maximum(shares[lists], 1.0 / num_users)
    return float(np.mean(-np.log2(p)))


def intra_list_diversity(lists: np.ndarray, vectors: np.ndarray) -> float:
    """Mean over lists of the mean pairwise ``1 - cos`` (``vectors``: unit rows)."""
    k = lists.shape[1]
    if k < 2:
        raise ValueError("diversity needs lists of at least 2 items")
    rows = vectors[lists]  # (lists, k, d)
    cos = np.einsum("lid,ljd->lij", rows, rows)
    off_diagonal = (cos.sum(axis=(1, 2)) - np.trace(cos, axis1=1, axis2=2)) / (k * (k - 1))
    return float(np.mean(1.0 - off_diagonal))


def exposure_gini(lists: np.ndarray, num_items: int) -> float:
    """Gini coefficient of item exposure counts over the whole catalogue."""
    counts = np.sort(np.bincount(lists.ravel(), minlength=num_items)).astype(np.float64)
    n = len(counts)
    if counts.sum() == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float(np.sum((2 * ranks - n - 1) * counts) / (n * counts.sum()))


def beyond_accuracy(
    lists: np.ndarray,
    num_items: int,
    shares: np.ndarray,
    num_users: int,
    vectors: np.ndarray | None,
) -> dict[str, float | None]:
    """The four figures of a set of lists (diversity None without item vectors)."""
    return {
        COVERAGE10: coverage(lists, num_items),
        NOVELTY10: novelty(lists, shares, num_users),
        DIVERSITY10: None if vectors is None else intra_list_diversity(lists, vectors),
        EXPOSURE_GINI10: exposure_gini(lists, num_items),
    }


def top_k_unseen(scores: np.ndarray, seen: np.ndarray, k: int = 10) -> np.ndarray:
    """The ``k`` best-scored items outside ``seen``, best first (ties: smaller item id)."""
    masked = np.asarray(scores, dtype=np.float64).copy()
    masked[seen] = -np.inf
    order = np.lexsort((np.arange(len(masked)), -masked))
    return order[:k]
