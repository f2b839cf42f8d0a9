"""Adaptive clipping for user-level DP: the pure math (Andrew, Thakkar, McMahan, Ramaswamy,
"Differentially Private Learning with Adaptive Clipping", NeurIPS 2021).

Why: a fixed clip norm S chosen by hand either clips too much (bias) or too little (noise scaled
to a large S). The paper tracks the gamma-quantile of the devices' update norms privately.

* Each sampled device i reports ``b_i = [||Delta_i|| <= C]``, centred as ``b_i - 1/2`` so that
  adding or removing one device moves the sum by at most 1/2 (the paper's trick; with raw bits the
  sensitivity would be 1 and the bit noise would have to double).
* The server releases ``b_tilde = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2`` with m the
  expected cohort, and updates ``C <- C * exp(-eta * (b_tilde - gamma))`` (geometric rule).
* Privacy: the bit sum (multiplier ``2 sigma_b`` on sensitivity 1/2) and the update sum
  (multiplier ``z_Delta`` on sensitivity C) are two Gaussian mechanisms on the same sample; their
  composition is exactly one Gaussian mechanism of multiplier z when
  ``z^-2 = z_Delta^-2 + (2 sigma_b)^-2``, i.e. ``z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``.
  The accountant keeps using z; only the update noise uses the larger z_Delta.

Under device noise (Skellam inside SecAgg+) the bit is one more coordinate of each device's
noised integer vector, (b_i - 1/2) B with B even (:func:`bit_units`): the noise on the count is
then sqrt(mu) / B >= sigma_b in count units, and the pair is one Skellam mechanism whose l2
sensitivity is sqrt(Δ2² + (B / 2)²), accounted as such (server/user_dp.py).

What the released count reveals: the noised fraction of devices under the clip, to whoever reads
the run's log (it is released in metrics.jsonl), with the same user-level guarantee as the run.
"""

from __future__ import annotations

import math

PAPER_COUNT_STDDEV_DIVISOR = 20.0  # the paper's default: sigma_b = expected cohort / 20


def default_count_stddev(expected_cohort: float) -> float:
    """The paper's default bit-sum noise std: expected cohort / 20."""
    if expected_cohort <= 0:
        raise ValueError(f"expected cohort must be > 0, got {expected_cohort}")
    return expected_cohort / PAPER_COUNT_STDDEV_DIVISOR


def update_noise_multiplier(z: float, count_stddev: float) -> float:
    """z_Delta such that (update noise z_Delta, bit noise sigma_b) compose to one multiplier z.

    Refuses sigma_b <= z / 2 (the bit query alone would already spend all of z), naming the
    smallest value that works.
    """
    if z <= 0:
        raise ValueError(f"noise multiplier z must be > 0, got {z}")
    if count_stddev <= z / 2:
        raise ValueError(
            f"dp-user-clip-count-stddev = {count_stddev} is too small for z = {z}: the bit count "
            f"would use the whole privacy budget; set it above z / 2 = {z / 2} (paper: cohort / 20)"
        )
    return (z**-2 - (2.0 * count_stddev) ** -2) ** -0.5


def noised_clipped_fraction(centred_bit_sum: float, noise: float, expected_cohort: float) -> float:
    """b_tilde from the sum of centred bits (b_i - 1/2) and one N(0, sigma_b^2) draw."""
    return (centred_bit_sum + noise) / expected_cohort + 0.5


def next_clip_norm(clip: float, fraction_under: float, target_quantile: float, lr: float) -> float:
    """Geometric update C <- C * exp(-eta (b_tilde - gamma)).

    More devices under C than the target quantile -> C shrinks; fewer -> C grows.
    """
    if clip <= 0:
        raise ValueError(f"clip norm must be > 0, got {clip}")
    return clip * math.exp(-lr * (fraction_under - target_quantile))


def bit_units(mu_total: float, count_stddev: float) -> int:
    """B, the integer units one centred clip bit is scaled by under device noise.

    The largest even integer with sqrt(mu_total) / B >= sigma_b: the count's noise (Skellam of
    variance mu_total, in integer units) is then at least sigma_b in count units, and
    (b - 1/2) B is an exact integer. Refuses a noise too small to give B >= 2.
    """
    if count_stddev <= 0:
        raise ValueError(f"the count's noise std must be > 0, got {count_stddev}")
    units = 2 * math.floor(math.sqrt(max(mu_total, 0.0)) / (2 * count_stddev))
    if units < 2:
        raise ValueError(
            f"a noise of variance {mu_total:g} integer units cannot carry a count of noise std "
            f"{count_stddev:g}: the clip bit would need fewer than 2 units"
        )
    return units
