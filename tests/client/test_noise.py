"""Device noise through Flower's real SecAgg+ arithmetic: the unmasked sum holds the planned noise.

Each simulated device clips, scales, rounds and noises its update (client.noise), hands the
float to Flower's own ``quantize``, prepends the weight factor and adds Flower's masks
(``pseudo_rand_gen``, private and pairwise, ring neighbours as SecAgg+ builds them), all modulo
M; the server side sums the survivors, removes the survivors' private masks and the dropped
devices' pairwise masks, and dequantizes as ``SecAggPlusWorkflow``'s unmask stage does. The
updates are exact multiples of the quantization step, so the rounding is deterministic and the
noise on the sum can be read off exactly.

Statistics: every coordinate of the summed noise is one draw of Sk(mu_device * survivors).
Over N draws the sample mean lies within 4.5 standard errors of 0 and the sample variance within
4.5 standard errors (sqrt(2 / N) var: Skellam's excess kurtosis 1 / mu is ~1e-14 here) of the
planned variance; each check fails by chance with probability < 1e-5.
"""

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

from client.noise import noised_for_secagg
from shared.secagg import encode_exactly, plan_device_noise, plan_secagg

CLIP = 0.5
SIGMAS = 4.5
NEIGHBOURS = 3  # each side: num_shares 7


def _mask(seed: int, modulus: int, dims) -> list[np.ndarray]:
    return pseudo_rand_gen(int(seed).to_bytes(32, "little"), modulus, dims)


def _round(
    plan, devices: int, survivors: int, dimension: int, rng, bit_units: int = 0
) -> tuple[np.ndarray, int]:
    """One SecAgg+ round of ``devices`` whose first ``survivors`` arrive: (noise on the sum, k).

    ``bit_units`` B > 0: every device also sends a centred clip bit x B (adaptive clipping);
    the noise on the count, in integer units, is then the last coordinate of the result."""
    secagg = plan.secagg
    c, t, m = secagg.clipping_range, secagg.quantization_range, secagg.modulus_range
    step = 2 * c / t
    dims = [(1,), (dimension,), *([(1,)] if bit_units else [])]
    size = dimension + (1 if bit_units else 0)
    pair_seed = {(i, j): 1000 * i + j for i in range(devices) for j in range(devices) if i < j}
    neighbours = {
        i: {(i + o) % devices for o in range(-NEIGHBOURS, NEIGHBOURS + 1)} - {i}
        for i in range(devices)
    }
    true_sum = np.zeros(size, dtype=np.int64)
    masked_sum = [np.zeros(d, dtype=np.int64) for d in dims]
    for i in range(survivors):
        steps = rng.integers(-50, 51, size=dimension)  # an update on the quantization grid
        steps = (steps * min(1.0, CLIP / (step * np.linalg.norm(steps)))).astype(np.int64)
        update = [steps * step]
        centred = [float(rng.choice([-0.5, 0.0, 0.5]))] if bit_units else []
        true_sum += np.concatenate([steps, np.int64(np.array(centred) * bit_units)])
        bit = dict(centred_bit=centred[0], bit_units=bit_units) if bit_units else {}
        sent, clamped = noised_for_secagg(update, CLIP, c, t, plan.mu_device, rng, **bit)
        assert clamped == 0 and len(sent) == len(dims) - 1
        q = factor_combine(t, quantize(sent, c, t))  # weight 1, max weight 1: factor T
        q = parameters_addition(q, _mask(10**6 + i, m, dims))
        for j in neighbours[i]:
            pair = _mask(pair_seed[min(i, j), max(i, j)], m, dims)
            q = parameters_addition(q, pair) if i > j else parameters_subtraction(q, pair)
        masked_sum = parameters_addition(masked_sum, parameters_mod(q, m))
    for i in range(survivors):  # the server reconstructs the survivors' private masks...
        masked_sum = parameters_subtraction(masked_sum, _mask(10**6 + i, m, dims))
    for j in range(survivors, devices):  # ... and the dropped devices' pairwise masks
        for i in neighbours[j]:
            if i < survivors:
                pair = _mask(pair_seed[min(i, j), max(i, j)], m, dims)
                masked_sum = (
                    parameters_addition(masked_sum, pair)
                    if j > i
                    else parameters_subtraction(masked_sum, pair)
                )
    total = parameters_mod(masked_sum, m)
    factor, total = factor_extract(total)
    assert factor == survivors * t  # the weight factor: every survivor weighs 1
    mean = np.concatenate(dequantize(total, c, t)) - (survivors - 1) * c  # workflow's offset
    mean = mean * (t / factor)
    integer_sum = mean * survivors / step  # the server's float sum in quantizer units
    assert np.allclose(integer_sum, np.round(integer_sum), atol=1e-3)
    return np.round(integer_sum).astype(np.int64) - true_sum, survivors


@pytest.mark.parametrize(
    ("devices", "survivors", "draws", "dimension", "bits"),
    [
        (3, 3, 8, 2000, False),
        (10, 10, 4, 2000, False),
        (10, 6, 4, 2000, False),
        (10, 6, 4, 2000, True),
        (100, 100, 1, 800, False),
        (100, 70, 1, 800, False),
    ],
)
def test_the_unmasked_sum_holds_the_planned_skellam_noise(
    devices, survivors, draws, dimension, bits
):
    secagg = plan_secagg(CLIP, max(devices, 7), 7, 4, 60.0)
    plan = plan_device_noise(secagg, dimension, 1.0, 3, rounds=10)
    rng = np.random.default_rng(devices * 1000 + survivors)
    # adaptive clipping's B for a count noise of std 2 at the fewest survivors
    units = 2 * math.floor(math.sqrt(plan.mu_target) / 4) if bits else 0
    rounds = [_round(plan, devices, survivors, dimension, rng, units) for _ in range(draws)]
    noise = np.concatenate([n for n, _ in rounds])
    planned = plan.mu_device * survivors  # survivors' shares only: dropped devices took theirs
    n = noise.size
    mean, var = float(noise.mean()), float(noise.var())
    assert abs(mean) < SIGMAS * math.sqrt(planned / n), (mean, planned)
    assert abs(var - planned) < SIGMAS * planned * math.sqrt(2 / n), (var / planned, n)
    if bits:  # the count decodes exactly: its error is one noise draw, about 2 sqrt(6 / 3)
        count_errors = [n[-1] / units for n, _ in rounds]
        assert all(0 < abs(e) < SIGMAS * 2 * math.sqrt(survivors / 3) for e in count_errors)
    # in float units: the noise on the sum has std z S at the fewest survivors (z = 1)
    assert plan.float_stddev(plan.min_survivors) == pytest.approx(1.0 * CLIP, rel=1e-12)


def test_flowers_quantizer_returns_exactly_the_integer_a_device_encodes():
    c, t = 8.0, 2**30
    k = np.array([0, 1, 2, t // 2, t - 1, t, 123456789])
    assert (quantize([encode_exactly(k, c, t)], c, t)[0] == k).all()
    with pytest.raises(ValueError, match="powers of two"):
        encode_exactly(k, 8.000008, t)


@pytest.mark.parametrize("units", [0, 3, True, 2.0, 2 * 10**9])
def test_a_device_refuses_a_clip_bit_scale_that_would_stand_out_of_the_noise(units):
    update = [np.full(10, 0.01)]
    with pytest.raises(ValueError, match="even integer in"):
        noised_for_secagg(update, CLIP, 1.0, 2**20, 100.0, np.random.default_rng(0), 0.5, units)
