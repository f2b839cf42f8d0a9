"""The DP popularity baseline: sensitivity by construction, the noise it claims, its accounting."""

import math

import numpy as np
import pytest

from shared.baselines import POPULARITY, data_summary_with_baselines
from shared.config import resolve_config
from shared.dp_popularity import _capped_counts, dp_popularity_scores, user_contribution
from shared.split import LeaveOneOut
from shared.training import evaluate_popularity, evaluate_shared_scores


def _split(items_per_user, num_items=30, seed=0) -> LeaveOneOut:
    rng = np.random.default_rng(seed)
    rows = [np.sort(rng.choice(num_items - 1, size=n, replace=False)) for n in items_per_user]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    users = len(rows)
    return LeaveOneOut(
        num_users=users,
        num_items=num_items,
        train_indptr=indptr.astype(np.int64),
        train_items=np.concatenate(rows).astype(np.int64),
        test_item=np.full(users, num_items - 1, dtype=np.int64),
        eval_negatives=np.tile(np.arange(5, dtype=np.int64), (users, 1)),
    )


def test_one_user_adds_at_most_max_items_distinct_items_once():
    """The user-level sensitivity the noise is calibrated to holds for every user, capped or not:
    the counts are the sum of per-user contributions, each of L2 norm <= sqrt(max_items)."""
    split = _split([3, 12, 25, 7, 20])
    max_items = 8
    for seed in range(5):  # whichever subsets the cap draws
        counts, capped = _capped_counts(split, max_items, np.random.default_rng(seed))
        rng, total = np.random.default_rng(seed), np.zeros(split.num_items)
        for user in range(split.num_users):
            own = split.user_train_items(user)
            part = np.bincount(user_contribution(own, max_items, rng), minlength=split.num_items)
            assert np.linalg.norm(part) <= math.sqrt(max_items) + 1e-12
            assert set(np.flatnonzero(part)) <= set(own)  # only the user's own items
            assert part.sum() == min(len(own), max_items)
            total += part
        np.testing.assert_array_equal(counts, total)
        assert capped == 3  # the users with 12, 25 and 20 items


def test_noise_has_the_stddev_it_reports_and_the_accountant_reaches_the_target():
    split = _split([4] * 40, num_items=400)
    clean = np.bincount(split.train_items, minlength=split.num_items)
    noisy, release = dp_popularity_scores(split, 2.0, 1e-5, "interaction", np.random.default_rng(1))
    residual = noisy - clean
    # 400 draws: the sample std is within 10% of sigma with probability > 0.99
    assert abs(residual.std() / release.noise_stddev - 1) < 0.1
    assert abs(residual.mean()) < 4 * release.noise_stddev / math.sqrt(400)
    assert release.sensitivity == 1.0 and release.max_items is None
    assert 0.95 * 2.0 <= release.epsilon <= 2.0


def test_the_epsilon_is_the_gaussian_rdp_bound_computed_from_its_formula():
    """One Gaussian release: RDP α / (2 z²), converted with Balle et al. 2020 (what Opacus uses)."""
    split = _split([5] * 10)
    _, release = dp_popularity_scores(split, 4.0, 1e-5, "user", np.random.default_rng(0), 5)
    z, delta = release.noise_multiplier, 1e-5
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    by_formula = min(
        a / (2 * z * z) + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
        for a in orders
    )
    assert release.epsilon == pytest.approx(by_formula, rel=1e-9)
    assert release.noise_stddev == pytest.approx(z * math.sqrt(5))


def test_at_a_large_epsilon_without_capping_it_keeps_the_popularity_order():
    split = _split([3, 9, 6, 4, 8, 5], num_items=20)
    scores, release = dp_popularity_scores(split, 5e3, 1e-5, "user", np.random.default_rng(0), 9)
    counts = np.bincount(split.train_items, minlength=split.num_items)
    assert release.users_capped == 0 and release.noise_stddev < 0.05
    more = counts[:, None] > counts[None, :]  # every strictly ordered pair keeps its order
    assert (scores[:, None] > scores[None, :])[more].all()
    assert evaluate_shared_scores(split, counts.astype(float)) == evaluate_popularity(split)


@pytest.mark.parametrize(
    ("unit", "epsilon", "delta", "message"),
    [
        ("device", 1.0, 1e-5, "unknown DP unit"),
        ("user", 0.0, 1e-5, "positive"),
        ("user", float("nan"), 1e-5, "positive"),
        ("user", 1.0, 1.0, "δ must be in"),
    ],
)
def test_bad_settings_are_refused(unit, epsilon, delta, message):
    with pytest.raises(ValueError, match=message):
        dp_popularity_scores(_split([3]), epsilon, delta, unit, np.random.default_rng(0))


def test_a_dp_run_records_the_dp_popularity_beside_the_plain_one(tmp_path):
    overrides = ["synthetic-users=40", "synthetic-items=200", "eval-negatives=20"]
    plain, _ = resolve_config(None, overrides, str(tmp_path / "a"))
    assert set(data_summary_with_baselines(plain).baselines) == {POPULARITY, "random"}
    dp, _ = resolve_config(
        None,
        [*overrides, "dp-user=true", "dp-user-target-epsilon=4", "dp-reproducible-noise=true"],
        str(tmp_path / "b"),
    )
    first = data_summary_with_baselines(dp).baselines["dp_popularity_user"]
    assert 0.95 * 4 <= first["epsilon"] <= 4 and first["delta"] == 1e-5
    assert first == data_summary_with_baselines(dp).baselines["dp_popularity_user"]  # seeded
