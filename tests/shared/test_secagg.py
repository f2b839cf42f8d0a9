"""The derived SecAgg+ parameters, checked against Flower's own quantizer and modular arithmetic."""

import math

import numpy as np
import pytest
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_combine,
    factor_extract,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

from shared.privacy import clip_update
from shared.secagg import (
    INT64_LIMIT,
    SecAggConfigError,
    SecAggPlan,
    largest_safe_cohort,
    plan_secagg,
    quantizer_clip_count,
)


def plan(bound=1.0, cohort=1000, shares=7, threshold=4, timeout=60.0) -> SecAggPlan:
    return plan_secagg(bound, cohort, shares, threshold, timeout)


def flower_sum(updates, clipping_range, quantization_range, modulus, max_weight=1.0, weight=1):
    """Flower's SecAgg+ arithmetic for one round, step by step as in its mod and workflow.

    Device: scale by its weight ratio, quantize, prepend the weight factor, add its private mask,
    reduce mod M. Server: sum mod M, remove the masks, extract the factor, dequantize, shift and
    divide by the summed weight. Pairwise masks cancel in the sum and are left out.
    """
    total, masks = None, []
    for i, update in enumerate(updates):
        q_ratio = round(weight / max_weight * quantization_range)
        scaled = [u * (q_ratio / quantization_range) for u in update]
        vector = factor_combine(q_ratio, quantize(scaled, clipping_range, quantization_range))
        mask = pseudo_rand_gen(bytes([i % 256] * 32), modulus, [a.shape for a in vector])
        masks.append(mask)
        vector = parameters_mod(parameters_addition(vector, mask), modulus)
        total = vector if total is None else parameters_addition(total, vector)
    total = parameters_mod(total, modulus)
    for mask in masks:
        total = parameters_subtraction(total, mask)
    q_total, summed = factor_extract(parameters_mod(total, modulus))
    values = dequantize(summed, clipping_range, quantization_range)
    offset = -(len(updates) - 1) * clipping_range
    return [(v + offset) * (quantization_range / q_total) for v in values]


def test_derived_parameters_cannot_clip_or_wrap():
    for bound, cohort, shares in [(1.0, 1000, 7), (0.05, 20, 3), (250.0, 100_000, 11)]:
        p = plan(bound, cohort, shares, shares // 2 + 1)
        assert p.clipping_range >= bound  # |x_i| <= ||x|| <= bound: no coordinate is clipped
        assert p.worst_case_sum(cohort) < p.modulus_range  # the cohort's sum never wraps
        assert (cohort * shares + 2) * p.modulus_range < INT64_LIMIT  # int64 stays exact
        assert p.modulus_range & (p.modulus_range - 1) == 0  # a power of two, as Flower needs
        assert p.quantization_range + 1 < 2**31  # the quantizer rounds into int32
        assert p.max_weight == 1.0


def test_worst_case_cohort_sums_exactly_with_flower_arithmetic():
    """Every device at the extreme, the largest cohort: Flower's pipeline returns the true mean."""
    p = plan(bound=0.5, cohort=400, shares=5, threshold=3)
    rng = np.random.default_rng(0)
    updates = []
    for i in range(p.max_cohort):
        one_hot = np.zeros(6)
        one_hot[i % 6] = p.bound * (1 if i % 2 else -1)  # all the norm on one coordinate
        dense = clip_update([rng.normal(size=40)], p.bound)[0][0]
        dense *= p.bound / np.linalg.norm(dense)  # exactly on the bound
        updates.append([one_hot, dense])
    assert (
        sum(quantizer_clip_count(u, p.clipping_range, p.quantization_range, 1, 1) for u in updates)
        == 0
    )
    mean = flower_sum(updates, p.clipping_range, p.quantization_range, p.modulus_range)
    want = [np.mean([u[j] for u in updates], axis=0) for j in range(2)]
    for got, expected in zip(mean, want, strict=True):
        np.testing.assert_allclose(got, expected, atol=2 * p.step)


def test_flower_defaults_wrap_around_silently_where_the_plan_does_not():
    """The failure the derivation prevents: Flower's defaults (c 8, T 2^22, M 2^32) wrap."""
    n = 1025  # > 2^32 / 2^22 devices, every coordinate at the top of the range
    updates = [[np.full(3, 8.0)] for _ in range(n)]
    wrapped = flower_sum(updates, 8.0, 2**22, 2**32)
    assert not np.allclose(wrapped[0], 8.0, atol=1.0)  # silently wrong, no error
    p = plan(bound=8.0, cohort=n, shares=7)
    np.testing.assert_allclose(
        flower_sum(updates, p.clipping_range, p.quantization_range, p.modulus_range)[0],
        8.0,
        atol=2 * p.step,
    )


def test_clipping_is_counted_and_impossible_under_the_bound():
    p = plan(bound=1.0)
    rng = np.random.default_rng(1)
    for _ in range(20):
        clipped = clip_update([rng.normal(size=(30, 4)) * 5, rng.normal(size=7)], p.bound)[0]
        assert quantizer_clip_count(clipped, p.clipping_range, p.quantization_range, 1, 1) == 0
    # An update that was not clipped to the bound: the count says how many coordinates the
    # quantizer cuts, and Flower's dequantized values are indeed wrong exactly there.
    big = [np.array([3.0, -0.5, 2.0, 0.1])]
    assert quantizer_clip_count(big, 1.0, 2**20, 1, 1) == 2
    got = flower_sum([big], 1.0, 2**20, 2**32)[0]
    assert np.sum(~np.isclose(got, big[0], atol=1e-5)) == 2
    # a weight above max_weight scales the update up before quantizing (Flower only warns)
    assert quantizer_clip_count([np.array([0.6])], 1.0, 2**20, 2, 1) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shares": 6, "threshold": 4}, r"odd and at least 3.*use 7"),
        ({"shares": 1, "threshold": 1}, "odd and at least 3"),
        ({"shares": 7, "threshold": 7}, r"4 <= threshold <= 6"),
        ({"shares": 7, "threshold": 3}, r"majority"),
        ({"timeout": float("inf")}, "finite number of seconds"),
        ({"timeout": 0.0}, "finite number of seconds"),
        ({"bound": 0.0}, "positive finite"),
        ({"bound": float("nan")}, "positive finite"),
        ({"cohort": 5, "shares": 7}, r"secagg-max-cohort >= 7"),
    ],
)
def test_unsafe_protocol_settings_refused(kwargs, message):
    with pytest.raises(SecAggConfigError, match=message):
        plan(**kwargs)


def test_too_large_cohort_refused_with_a_cohort_that_works():
    limit = largest_safe_cohort(7)
    with pytest.raises(SecAggConfigError, match=f"secagg-max-cohort <= {limit}"):
        plan(cohort=limit + 1)
    assert plan(cohort=limit).quantization_range >= 2**16


# -- device noise ------------------------------------------------------------------------------
def test_device_noise_plan_cannot_wrap_or_clamp_and_keeps_flowers_quantizer_exact():
    from shared.secagg import CLAMP_BUDGET, MAX_DEVICE_MU, plan_device_noise

    base = plan_secagg(0.5, 1000, 7, 4, 60.0)
    noise = plan_device_noise(base, 60_000, 1.0, 4, rounds=100)
    c, t = noise.secagg.clipping_range, noise.secagg.quantization_range
    assert math.frexp(c)[0] == 0.5 and math.frexp(t)[0] == 0.5  # powers of two
    assert c >= 0.5 and noise.scale == t / (2 * c)
    assert noise.clamp_probability(100) <= CLAMP_BUDGET and noise.mu_device <= MAX_DEVICE_MU
    # the largest integer a device can send (clamped to T) cannot wrap the cohort's sum
    assert noise.secagg.modulus_range > 2 * 1000 * (t + 1)
    # rounding inflates the sensitivity by less than 1 %
    assert noise.l2 <= 1.01 * 0.5 * noise.scale
    # the noise on the sum of the fewest survivors has std z S
    assert noise.float_stddev(4) == pytest.approx(0.5, rel=1e-12)


def test_device_noise_that_could_clamp_is_refused_with_values_that_work():
    from shared.secagg import plan_device_noise

    # 2^30 steps cannot hold both a fine step (>= 1,100 per S for 10^5 coordinates) and noise
    # of std 5,000 S from one device (each device adds at most 2^41 of Skellam variance)
    base = plan_secagg(1.0, 1000, 7, 4, 60.0)
    assert base.quantization_range == 2**30
    with pytest.raises(SecAggConfigError) as refused:
        plan_device_noise(base, 100_000, 5e3, 1, rounds=10)
    message = str(refused.value)
    assert "dp-noise-min-survivors >=" in message and "secagg-max-cohort" in message
    # what it suggests works: the largest noise multiplier it names, or that many survivors
    z = float(message.split("dp-user-noise-multiplier <= ")[1].split(",")[0].split(" ")[0])
    survivors = int(message.split("dp-noise-min-survivors >= ")[1].split(" ")[0])
    assert 1 < z < 5e3
    plan_device_noise(base, 100_000, z, 1, rounds=10)
    assert 1 < survivors <= 1000
    plan_device_noise(base, 100_000, 5e3, survivors, rounds=10)
    with pytest.raises(SecAggConfigError, match="dp-noise-min-survivors must be in"):
        plan_device_noise(plan_secagg(1.0, 10, 7, 4, 60.0), 1000, 1.0, 11, rounds=1)
