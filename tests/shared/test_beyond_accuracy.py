"""Beyond-accuracy figures on hand-computed cases."""

import numpy as np
import pytest

from shared.beyond_accuracy import (
    coverage,
    exposure_gini,
    intra_list_diversity,
    item_shares,
    novelty,
    top_k_unseen,
)


def test_coverage_counts_distinct_items_over_the_catalogue():
    assert coverage(np.array([[0, 1], [1, 2]]), 10) == pytest.approx(0.3)


def test_gini_is_zero_for_equal_exposure_and_maximal_for_one_item():
    assert exposure_gini(np.array([[0, 1], [2, 3]]), 4) == pytest.approx(0.0)
    # counts sorted [0, 0, 0, 4]: sum (2i - n - 1) x_i / (n sum x) = 3 * 4 / (4 * 4) = 0.75
    assert exposure_gini(np.array([[3, 3], [3, 3]]), 4) == pytest.approx(0.75)
    # counts [0, 1, 1, 2] -> ((-3)0 + (-1)1 + (1)1 + (3)2) / (4 * 4) = 6 / 16
    assert exposure_gini(np.array([[1, 3], [2, 3]]), 4) == pytest.approx(0.375)


def test_novelty_is_mean_self_information_with_unseen_items_as_one_user():
    indptr = np.array([0, 2, 3, 4, 5])  # 4 users
    items = np.array([0, 1, 0, 0, 0])  # item 0: all 4 users, item 1: 1 user, item 2: nobody
    shares = item_shares(indptr, items, 3)
    assert shares.tolist() == [1.0, 0.25, 0.0]
    # -log2(1) = 0, -log2(1/4) = 2, item 2 as if 1 of 4 users: 2 -> mean of [0, 2, 2, 2]
    assert novelty(np.array([[0, 1], [2, 1]]), shares, 4) == pytest.approx(1.5)


def test_a_user_counts_an_item_once_in_its_share():
    assert item_shares(np.array([0, 3]), np.array([1, 1, 1]), 2).tolist() == [0.0, 1.0]


def test_diversity_is_mean_pairwise_one_minus_cosine():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    # list [0, 1, 2]: pairs (0,1) 1-0, (0,2) 1-1, (1,2) 1-0 -> 2/3; list [0, 3]: 1-(-1) = 2
    assert intra_list_diversity(np.array([[0, 1, 2]]), vectors) == pytest.approx(2 / 3)
    assert intra_list_diversity(np.array([[0, 3]]), vectors) == pytest.approx(2.0)


def test_top_k_skips_seen_items_and_breaks_ties_by_id():
    scores = np.array([5.0, 9.0, 5.0, 1.0, 9.0])
    assert top_k_unseen(scores, np.array([1]), 3).tolist() == [4, 0, 2]
