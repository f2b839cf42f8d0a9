"""DP-FedAvg on the server: clipping, fixed denominator, noise, Poisson sampling, accounting."""

import numpy as np
import pytest

from server.user_dp import UserLevelDP, noisy_average
from shared.privacy import clip_update, epsilon
from tests.conftest import small_config


def test_clip_update_scales_only_large_updates():
    small = [np.array([0.3, 0.4])]
    clipped, norm = clip_update(small, 1.0)
    assert norm == pytest.approx(0.5) and np.allclose(clipped[0], small[0])
    clipped, norm = clip_update([np.array([3.0, 4.0]), np.array([[0.0]])], 1.0)
    assert norm == pytest.approx(5.0)
    assert np.allclose(clipped[0], [0.6, 0.8])


def test_noise_free_average_uses_fixed_denominator_and_clipping():
    shapes = [(2,)]
    updates = [[np.array([3.0, 4.0])], [np.array([0.1, 0.0])]]  # the first is clipped to norm 1
    got = noisy_average(updates, shapes, 1.0, 0.0, 4.0, np.random.default_rng(0))
    np.testing.assert_allclose(got[0], (np.array([0.6, 0.8]) + [0.1, 0.0]) / 4.0)


def test_noise_std_is_z_times_s_over_denominator():
    shapes = [(200_000,)]
    got = noisy_average([], shapes, 0.5, 2.0, 10.0, np.random.default_rng(1))[0]
    assert got.std() == pytest.approx(2.0 * 0.5 / 10.0, rel=0.01)
    assert abs(got.mean()) < 1e-3


def _mechanism(**changes):
    config = small_config(
        dp_user=True,
        dp_user_noise_multiplier=1.0,
        dp_user_clip_norm=1.0,
        clients_per_round=10,
        **changes,
    )
    return UserLevelDP.from_config(config, population=100)


def test_poisson_sampling_rate_seeded_and_accounted():
    mechanism = _mechanism(dp_reproducible_noise=True)
    nodes = list(range(1000, 1100))
    sizes = [len(mechanism.sample(nodes, r)) for r in range(1, 201)]
    assert np.mean(sizes) == pytest.approx(10, rel=0.1) and len(set(sizes)) > 3  # varies
    again = _mechanism(dp_reproducible_noise=True)
    seeded = _mechanism(dp_reproducible_noise=True)
    assert again.sample(nodes, 7) == seeded.sample(list(reversed(nodes)), 7)
    assert mechanism.history.entries == ((1.0, 0.1, 200),)
    assert mechanism.epsilon() == pytest.approx(epsilon([(1.0, 0.1, 200)], 1e-5))


def test_sampling_and_noise_are_secret_by_default():
    """From the run's seed (in config.json) anyone could replay who was sampled and the noise."""
    nodes = list(range(1000))
    first, second = _mechanism(), _mechanism()
    assert first.sample(nodes, 3) != second.sample(nodes, 3)
    total = [np.zeros(50)]
    assert not np.array_equal(
        first.aggregate_sum(total, 100, 3)[0], second.aggregate_sum(total, 100, 3)[0]
    )
    seeded = [_mechanism(dp_reproducible_noise=True) for _ in range(2)]
    np.testing.assert_array_equal(
        seeded[0].aggregate_sum(total, 100, 3)[0], seeded[1].aggregate_sum(total, 100, 3)[0]
    )


def test_cap_stops_before_the_round_that_would_pass_it():
    cap = epsilon([(1.0, 0.1, 5)], 1e-5) + 1e-6
    mechanism = _mechanism(dp_user_epsilon_cap=cap)
    rounds = 0
    while not mechanism.would_pass_cap(100):
        mechanism.sample(list(range(100)), rounds)
        rounds += 1
    assert rounds == 5 and mechanism.epsilon() <= cap


def test_target_epsilon_sets_z_for_the_run():
    mechanism = _mechanism(dp_user_target_epsilon=4.0, num_server_rounds=50)
    reached = epsilon([(mechanism.noise_multiplier, 0.1, 50)], 1e-5)
    assert reached == pytest.approx(4.0, rel=0.02)
