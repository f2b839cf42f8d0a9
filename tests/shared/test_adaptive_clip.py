import math

import numpy as np
import pytest

from shared.adaptive_clip import (
    default_count_stddev,
    next_clip_norm,
    noised_clipped_fraction,
    update_noise_multiplier,
)


def test_noise_split_matches_hand_computation():
    # z = 1, sigma_b = 1: (1 - 1/4)^(-1/2) = 2/sqrt(3)
    assert update_noise_multiplier(1.0, 1.0) == pytest.approx(2 / math.sqrt(3), rel=1e-12)
    # the pair composes back to z: z_Delta^-2 + (2 sigma_b)^-2 == z^-2
    zd = update_noise_multiplier(0.8, 5.0)
    assert zd**-2 + (2 * 5.0) ** -2 == pytest.approx(0.8**-2, rel=1e-12)
    assert zd > 0.8


def test_too_small_count_stddev_is_refused_with_the_bound():
    with pytest.raises(ValueError, match="z / 2 = 0.5"):
        update_noise_multiplier(1.0, 0.5)


def test_default_count_stddev_is_cohort_over_20():
    assert default_count_stddev(100) == 5.0


def test_clip_moves_to_target_quantile_on_synthetic_norms():
    rng = np.random.default_rng(0)
    norms = rng.lognormal(mean=0.0, sigma=0.5, size=100_000)
    target = float(np.quantile(norms, 0.5))
    clip, cohort = 20.0, 200
    for _ in range(400):
        sample = rng.choice(norms, size=cohort)
        centred = float(np.sum((sample <= clip) - 0.5))
        frac = noised_clipped_fraction(centred, rng.normal(0, cohort / 20), cohort)
        clip = next_clip_norm(clip, frac, 0.5, 0.2)
    assert abs(clip - target) / target < 0.15


def test_geometric_rule_direction():
    assert next_clip_norm(1.0, 0.9, 0.5, 0.2) < 1.0
    assert next_clip_norm(1.0, 0.1, 0.5, 0.2) > 1.0
    assert next_clip_norm(2.0, 0.5, 0.5, 0.2) == 2.0
