"""The popularity baseline: the models' protocol, vectorised; and the random-ranking line."""

from __future__ import annotations

import numpy as np
import pytest

from shared.data import from_arrays, synthetic
from shared.metrics import full_ranking_metrics, random_hit_ratio, sampled_metrics
from shared.split import leave_one_out
from shared.training import evaluate_popularity, popularity_scores
from shared.wire import EVAL_METRICS, FULL_HR10, FULL_NDCG10, HR10


def per_user_reference(split, scores, k=10):
    """The per-user functions the models are scored with, one user at a time."""
    rows = []
    for u in range(split.num_users):
        data = split.user_data(u)
        hr, nd = sampled_metrics(scores[data.test_item], scores[data.eval_negatives], k)
        fh, fn = full_ranking_metrics(scores, data.test_item, data.train_items, k)
        rows.append((hr, nd, fh, fn))
    return dict(zip(EVAL_METRICS, np.mean(rows, axis=0).tolist(), strict=True))


@pytest.mark.parametrize("k", [1, 10])
def test_popularity_equals_the_per_user_protocol(k) -> None:
    split = leave_one_out(synthetic(80, 300, 2), seed=2)
    got = evaluate_popularity(split, k)
    want = per_user_reference(split, popularity_scores(split), k)
    assert got == pytest.approx(want, abs=1e-12)
    if k == 10:
        assert got[HR10] > 2 * random_hit_ratio(99)  # synthetic popularity is strongly skewed


def test_popularity_golden_with_ties_against_the_true_item() -> None:
    # user: items in time order (the last is held out)
    # 0: 0, 1, 2   1: 0, 1, 3   2: 0, 2   3: 1, 0  -> training counts: item 0 x3, 1 x3, 2 x0, 3 x0
    inter = from_arrays(
        [0, 0, 0, 1, 1, 1, 2, 2, 3, 3],
        [0, 1, 2, 0, 1, 3, 0, 2, 1, 0],
        [1, 2, 3, 1, 2, 3, 1, 2, 1, 2],
    )
    split = leave_one_out(inter, num_eval_negatives=0)
    assert split.test_item.tolist() == [2, 3, 2, 0]
    assert popularity_scores(split).tolist() == [3.0, 3.0, 0.0, 0.0]
    # full ranking over unseen items; a tie counts against the true item:
    # user 0: 2 ties 3 -> rank 1; user 1: 3 ties 2 -> rank 1; user 2: 2 under 1, ties 3 -> rank 2;
    # user 3: 0 beats 2 and 3 -> rank 0
    top1 = evaluate_popularity(split, k=1)
    assert top1[FULL_HR10] == pytest.approx(0.25)
    top10 = evaluate_popularity(split, k=10)
    assert top10[FULL_HR10] == 1.0
    assert top10[FULL_NDCG10] == pytest.approx((2 / np.log2(3) + 1 / np.log2(4) + 1) / 4)


def test_random_hit_ratio() -> None:
    assert random_hit_ratio(99) == pytest.approx(0.1)
    assert random_hit_ratio(5) == 1.0  # 6 candidates, top 10: always a hit
