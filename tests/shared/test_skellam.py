"""The Skellam accountant against an independent reference, the exact divergence and Gaussian."""

import math

import numpy as np
import pytest

from shared import skellam
from shared.privacy import _opacus_accountants
from shared.secagg import MAX_DEVICE_MU

L2 = 100.0
L1 = L2 * min(math.sqrt(1000), L2)  # d = 1000


# Numbers printed by tests/shared/skellam_reference.py (mpmath, 50 digits, written from the
# papers independently of shared/skellam.py).
@pytest.mark.parametrize(
    ("mu", "q", "rounds", "expected"),
    [(2e4, 0.1, 20, 2.95267286912928), (5e4, 1.0, 1, 1.91621573677946)],
)
def test_epsilon_matches_the_independent_reference(mu, q, rounds, expected):
    assert skellam.epsilon([(mu, q, L1, L2, rounds)], 1e-5) == pytest.approx(expected, rel=1e-9)


def test_theorem_bounds_the_exact_renyi_divergence_of_a_one_dimensional_shift():
    reference = pytest.importorskip("tests.shared.skellam_reference")
    for alpha in (2, 8, 32):
        exact = float(reference.exact_divergence(alpha, 20, 3))
        assert exact <= skellam.skellam_rdp(alpha, 20, 3, 3)  # the theorem is an upper bound
    # reference values (mu = 20, shift 3): exact 0.444952416868 / 1.50892817799 at alpha 2 / 8
    assert float(reference.exact_divergence(2, 20, 3)) == pytest.approx(0.444952416868, rel=1e-9)
    assert skellam.skellam_rdp(2, 20, 3, 3) == pytest.approx(0.478125, rel=1e-12)  # 7 % above


def test_skellam_rdp_approaches_the_gaussians_as_mu_grows():
    ratios = []
    for mu in (1e2, 1e4, 1e6, 1e8):
        gaussian = 8 * L2**2 / (2 * mu)  # alpha Δ² / (2 σ²) with σ² = mu
        ratios.append(skellam.skellam_rdp(8, mu, L1, L2) / gaussian)
    assert all(a > b for a, b in zip(ratios, ratios[1:], strict=False))
    assert ratios[-1] == pytest.approx(1.0, abs=1e-3) and ratios[0] > 1.01


def test_subsampled_bound_is_never_below_opacus_tight_subsampled_gaussian():
    rdp = _opacus_accountants().analysis.rdp
    orders = [a for a in skellam.ORDERS if a <= 63]
    for mu, q in ((2e4, 0.1), (1e6, 0.01), (5e3, 0.5)):
        sigma = math.sqrt(mu) / L2  # the same variance, in units of the l2 sensitivity
        gaussian = rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=orders)
        ours = skellam.round_rdp(mu, q, L1, L2)[: len(orders)]
        assert all(o >= g for o, g in zip(ours, gaussian, strict=True))


def test_target_is_reached_and_more_noise_never_costs_more():
    mu = skellam.mu_for_target(2.0, 1e-5, 0.1, 20, 1e4, 1000, 1.0)
    l2 = skellam.rounded_l2(1e4, 1000)
    l1 = skellam.rounded_l1(l2, 1000)
    assert skellam.epsilon([(mu, 0.1, l1, l2, 20)], 1e-5) == pytest.approx(2.0, rel=1e-6)
    assert skellam.epsilon([(2 * mu, 0.1, l1, l2, 20)], 1e-5) < 2.0


def test_history_replaces_its_last_round_and_round_trips():
    h = skellam.SkellamHistory().add(9.0, 0.1, 3.0, 2.0).add(9.0, 0.1, 3.0, 2.0)
    assert h.entries == ((9.0, 0.1, 3.0, 2.0, 2),) and h.steps == 2
    settled = h.replace_last_round(30.0, 0.1, 3.0, 2.0)
    assert settled.entries == ((9.0, 0.1, 3.0, 2.0, 1), (30.0, 0.1, 3.0, 2.0, 1))
    assert settled.epsilon(1e-5) < h.epsilon(1e-5)  # more survivors: more noise present
    assert skellam.SkellamHistory.from_array(settled.to_array()) == settled
    with pytest.raises(ValueError, match="never accounted"):
        skellam.SkellamHistory().replace_last_round(1.0, 0.1, 1.0, 1.0)


def test_tail_bound_holds_against_the_exact_tail():
    reference = pytest.importorskip("tests.shared.skellam_reference")
    mu, a = 20.0, 15
    exact = 2 * sum(float(reference.skellam_pmf(k, mu)) for k in range(a + 1, a + 400))
    assert exact <= skellam.tail_bound(mu, a) < 20 * exact


def test_numpy_poisson_is_accurate_up_to_the_plans_cap():
    # The plan never asks a device for more than MAX_DEVICE_MU (each Poisson mean 2^40): NumPy
    # 2.4's sampler is right there, and 13 % off in variance at mean 7.5e14 (the reason for it).
    rng = np.random.default_rng(7)
    draws = skellam.sample(rng, MAX_DEVICE_MU, 400_000).astype(np.float64)
    n = draws.size
    assert abs(draws.var() / MAX_DEVICE_MU - 1) < 4.5 * math.sqrt(2 / n)
    assert abs(draws.mean()) < 4.5 * math.sqrt(MAX_DEVICE_MU / n)


def test_conditional_rounding_is_unbiased_and_bounded():
    rng = np.random.default_rng(3)
    x = rng.normal(size=50) * 2.0
    bound = skellam.rounded_l2(float(np.linalg.norm(x)), x.size)
    rounds = np.array([skellam.conditional_round(x, bound, rng) for _ in range(4000)])
    assert (np.linalg.norm(rounds, axis=1) <= bound).all()
    assert np.abs(rounds.mean(axis=0) - x).max() < 0.05  # unbiased (up to the rejection)
    with pytest.raises(ValueError, match="not clipped"):
        skellam.conditional_round(x * 10, bound, rng)
