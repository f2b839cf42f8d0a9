"""Accountants against published values, and composition over rounds."""

import numpy as np
import pytest

from shared.privacy import PrivacyHistory, epsilon, noise_for_target, planned_participations


def test_opacus_rdp_golden():
    # Opacus' own test: sigma=1.5, q=0.04, 2250 steps, delta=1e-5
    assert epsilon([(1.5, 0.04, 2250)], 1e-5, "rdp") == pytest.approx(7.32911117143, rel=1e-6)


def test_rdp_and_prv_small_epsilon():
    history = [(4.0, 0.01, 10_000)]
    assert epsilon(history, 1e-5, "rdp") == pytest.approx(1.0355, abs=1e-3)
    assert epsilon(history, 1e-5, "prv") == pytest.approx(0.9569, rel=0.01)


def test_rdp_against_google_dp_accounting():
    # Google's dp_accounting RdpAccountant: sigma=1, q=0.01, 1000 steps, delta=1e-6 -> 2.437
    assert epsilon([(1.0, 0.01, 1000)], 1e-6, "rdp") == pytest.approx(2.437, abs=0.02)


def test_rounds_compose_like_one_accountant_over_all_steps():
    history = PrivacyHistory()
    per_round = []
    for _ in range(12):
        history = history.add(1.1, 0.25, 8)
        per_round.append(history.epsilon(1e-5))
    assert per_round == sorted(per_round) and per_round[0] < per_round[-1]  # never decreases
    assert per_round[-1] == pytest.approx(epsilon([(1.1, 0.25, 96)], 1e-5), rel=1e-12)
    # per-round accounting (a fresh engine each round) would claim far less: the bug we avoid
    assert per_round[0] * 2 < per_round[-1]


def test_mixed_mechanisms_compose():
    history = PrivacyHistory().add(1.0, 0.5, 4).add(2.0, 0.25, 6).add(1.0, 0.5, 4)
    assert history.entries == ((1.0, 0.5, 4), (2.0, 0.25, 6), (1.0, 0.5, 4))
    assert history.steps == 14
    both = epsilon([(1.0, 0.5, 8), (2.0, 0.25, 6)], 1e-5)
    assert history.epsilon(1e-5) == pytest.approx(both, rel=1e-9)  # order does not matter for RDP


def test_restored_history_gives_identical_epsilon():
    history = PrivacyHistory().add(0.9, 0.125, 16).add(1.3, 0.5, 3)
    restored = PrivacyHistory.from_array(history.to_array())
    assert restored == history
    assert restored.epsilon(1e-5, "rdp") == history.epsilon(1e-5, "rdp")
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        PrivacyHistory.from_array(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="finite"):
        PrivacyHistory.from_array(np.array([[np.nan, 0.1, 3]]))


def test_empty_history_is_zero_and_target_noise_round_trips():
    assert PrivacyHistory().epsilon(1e-5) == 0.0
    sigma = noise_for_target(4.0, 1e-5, 0.1, 500)
    assert epsilon([(sigma, 0.1, 500)], 1e-5) == pytest.approx(4.0, rel=0.02)
    with pytest.raises(ValueError, match="positive"):
        noise_for_target(0.0, 1e-5, 0.1, 10)


def test_planned_participations_is_the_binomial_mean_plus_two_sigma():
    # 150 rounds, K = 100 of N = 943: mean 15.9, std 3.77 -> 23.5, rounded up
    assert planned_participations(150, 100, 943) == 24
    assert planned_participations(10, 10, 10) == 10  # every device every round: no spread
    assert planned_participations(1, 1, 10**6) == 1  # never plans for fewer than one round


def test_memoized_rdp_is_opacus_bit_for_bit():
    """ε from the memoized one-step curves equals Opacus' RDPAccountant exactly, on random
    histories of mixed (σ, q, steps), including the second call that reads the curves back."""
    from opacus.accountants import RDPAccountant

    rng = np.random.default_rng(7)
    for _ in range(25):
        history = [
            (float(rng.uniform(0.5, 3)), float(rng.uniform(1e-3, 1)), int(rng.integers(1, 500)))
            for _ in range(int(rng.integers(1, 5)))
        ]
        opacus = RDPAccountant()
        opacus.history = list(history)
        want = float(opacus.get_epsilon(delta=1e-5))
        assert epsilon(history, 1e-5) == want
        assert epsilon(history, 1e-5) == want  # read back from the memo
