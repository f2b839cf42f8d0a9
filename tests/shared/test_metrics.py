import math

import numpy as np
import pytest

from shared.metrics import full_ranking_metrics, ndcg, rank_of_true, sampled_metrics


def test_rank_counts_ties_against_true_item():
    assert rank_of_true(0.5, np.array([0.1, 0.5, 0.9])) == 2
    # every score equal: the true item loses every tie
    assert sampled_metrics(1.0, np.ones(99), k=10) == (0.0, 0.0)


def test_hand_computed_hits_and_ndcg():
    negatives = np.arange(99, dtype=float)  # scores 0..98
    assert sampled_metrics(200.0, negatives) == (1.0, 1.0)  # rank 0
    hr, nd = sampled_metrics(95.5, negatives)  # 96, 97, 98 above -> rank 3
    assert hr == 1.0 and nd == pytest.approx(1 / math.log2(5))
    hr, nd = sampled_metrics(88.5, negatives)  # rank 10: just outside the top 10
    assert (hr, nd) == (0.0, 0.0)
    hr, nd = sampled_metrics(89.5, negatives)  # rank 9: last slot of the top 10
    assert hr == 1.0 and nd == pytest.approx(1 / math.log2(11))


def test_ndcg_values():
    assert ndcg(0) == 1.0
    assert ndcg(1) == pytest.approx(1 / math.log2(3))
    assert ndcg(10) == 0.0


def test_full_ranking_excludes_training_items():
    scores = np.array([9.0, 8.0, 7.0, 1.0, 6.0, 0.5])
    # true item 3 (score 1.0): items 0 and 1 are training items and do not count against it
    hr, nd = full_ranking_metrics(scores, 3, np.array([0, 1]), k=2)
    assert (hr, nd) == (0.0, 0.0)  # items 2 and 4 still outrank it: rank 2
    hr, nd = full_ranking_metrics(scores, 3, np.array([0, 1, 2]), k=2)
    assert hr == 1.0 and nd == pytest.approx(1 / math.log2(3))  # only item 4 above: rank 1
    # a tie with an unseen item counts against the true item
    hr, _ = full_ranking_metrics(np.array([1.0, 1.0]), 0, np.array([], dtype=int), k=1)
    assert hr == 0.0
