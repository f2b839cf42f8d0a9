"""SecAgg+ quantization derived from a bound on the update, so that nothing can clip or wrap.

Flower's SecAgg+ (client ``secaggplus_mod``, server ``SecAggPlusWorkflow``) sends, per device,
``q = round((w * x + c) * T / 2c)`` for every coordinate x of the update (w: the device's weight
over ``max_weight``; c: ``clipping_range``; T: ``quantization_range``; values outside [-c, c] are
silently clipped), plus a weight factor, all masked modulo M (``modulus_range``). The server sums
modulo M and dequantizes. Two silent failures follow from a careless choice (docs/design.md §8):

* **clipping**: a coordinate with |w x| > c is cut to c;
* **wrap-around**: the cohort's sum of the q's (each in [0, T]) reaches M and wraps modulo M.

Here every parameter is derived instead of chosen. Each device clips its whole update to L2 norm
B (the user-level clip norm S, or ``secagg-update-bound``) before masking, so |x| <= ||x|| <= B for
every coordinate; it sends weight 1 and ``max_weight`` is 1, so w = 1; c is B plus a hair of
margin, so nothing is ever clipped. With at most n devices the masked sum is at most n * T, and
M is a power of two above 2 * n * (T + 1), so it never wraps. The protocol's int64 arithmetic must
not overflow either: a device adds its private mask and up to k - 1 pairwise masks (k: number of
shares), and the server's sum and unmasking touch at most n * k masks, each below M; requiring
(n * k + 2) * M < 2**63 keeps every intermediate exact. T is then the largest power of two up to
2**30 (the quantizer rounds into int32) that satisfies both; if even 2**16 does not, the
configuration is refused with the largest cohort that would work.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

# The wire names (the bound a device clips to, the count of coordinates the quantizer would clip)
# are shared.wire.SECAGG_BOUND and shared.wire.SECAGG_CLIPPED.
STAGES = ("setup", "share-keys", "collect", "unmask")  # the protocol's four stages, in order

MAX_QUANTIZATION_BITS = 30  # Flower's stochastic rounding casts to int32: T + 1 must fit
MIN_QUANTIZATION_BITS = 16  # below this, a step of 2B / T is too coarse to be worth running
INT64_LIMIT = 2**63
CLIP_MARGIN = 1e-6  # c = B (1 + margin): float rounding in the device's L2 clip never clips


class SecAggConfigError(ValueError):
    """SecAgg+ settings that could clip or wrap around; the message says what would work."""


@dataclass(frozen=True)
class SecAggPlan:
    """The SecAgg+ parameters for one run, derived from the update bound and the cohort."""

    bound: float  # B: every device's update has L2 norm <= B (it clips before masking)
    max_cohort: int  # n: the most devices one round may aggregate
    num_shares: int  # k
    reconstruction_threshold: int
    timeout: float
    clipping_range: float  # c >= B: no coordinate can be clipped
    quantization_range: int  # T
    modulus_range: int  # M > 2 n (T + 1): the masked sum cannot wrap
    max_weight: float = 1.0  # devices send weight 1 (uniform weights)

    @property
    def step(self) -> float:
        """The quantization step: the largest rounding error of one coordinate of one device."""
        return 2 * self.clipping_range / self.quantization_range

    def worst_case_sum(self, cohort: int) -> int:
        """The largest value the cohort's quantized sum (or its weight factor) can take."""
        return cohort * (self.quantization_range + 1)

    def workflow_kwargs(self) -> dict:
        """Keyword arguments of Flower's ``SecAggPlusWorkflow``."""
        return {
            "num_shares": self.num_shares,
            "reconstruction_threshold": self.reconstruction_threshold,
            "max_weight": self.max_weight,
            "clipping_range": self.clipping_range,
            "quantization_range": self.quantization_range,
            "modulus_range": self.modulus_range,
            "timeout": self.timeout,
        }


def _modulus(cohort: int, quantization_range: int) -> int:
    return 1 << math.ceil(math.log2(2 * cohort * (quantization_range + 1)))


def _fits_int64(cohort: int, num_shares: int, modulus: int) -> bool:
    return (cohort * num_shares + 2) * modulus < INT64_LIMIT


def largest_safe_cohort(num_shares: int) -> int:
    """The largest cohort for which the minimum precision (T = 2**16) still fits in int64."""
    low, high = 1, 2**40
    while low < high:
        mid = (low + high + 1) // 2
        t = 1 << MIN_QUANTIZATION_BITS
        if _fits_int64(mid, num_shares, _modulus(mid, t)):
            low = mid
        else:
            high = mid - 1
    return low


def plan_secagg(
    bound: float,
    max_cohort: int,
    num_shares: int,
    reconstruction_threshold: int,
    timeout: float,
) -> SecAggPlan:
    """Derive clipping range, quantization range, modulus and max weight; refuse what is unsafe."""
    if not (math.isfinite(bound) and bound > 0):
        raise SecAggConfigError(
            f"the SecAgg+ update bound must be a positive finite L2 norm, got {bound!r}; "
            "set secagg-update-bound (or dp-user-clip-norm with dp-user) to e.g. 1.0"
        )
    check_protocol(num_shares, reconstruction_threshold, timeout)
    if max_cohort < max(2, reconstruction_threshold, num_shares):
        raise SecAggConfigError(
            f"secagg-max-cohort {max_cohort} is smaller than secagg-num-shares {num_shares} "
            f"(or below 2): use secagg-max-cohort >= {max(2, num_shares)}"
        )
    for bits in range(MAX_QUANTIZATION_BITS, MIN_QUANTIZATION_BITS - 1, -1):
        t = 1 << bits
        modulus = _modulus(max_cohort, t)
        if _fits_int64(max_cohort, num_shares, modulus):
            return SecAggPlan(
                bound=float(bound),
                max_cohort=max_cohort,
                num_shares=num_shares,
                reconstruction_threshold=reconstruction_threshold,
                timeout=float(timeout),
                clipping_range=float(bound) * (1 + CLIP_MARGIN),
                quantization_range=t,
                modulus_range=modulus,
            )
    raise SecAggConfigError(
        f"secagg-max-cohort {max_cohort} with secagg-num-shares {num_shares} cannot be "
        "aggregated without int64 overflow at a useful precision: use secagg-max-cohort <= "
        f"{largest_safe_cohort(num_shares)} (or fewer shares)"
    )


def check_protocol(num_shares: int, threshold: int, timeout: float) -> None:
    """The protocol settings Flower would crash on, halt with, or wait forever for."""
    if num_shares < 3 or num_shares % 2 == 0:
        raise SecAggConfigError(
            f"secagg-num-shares must be odd and at least 3 (an even count crashes SecAgg+), "
            f"got {num_shares}: use {max(3, num_shares + 1 if num_shares % 2 == 0 else 3)}"
        )
    majority = num_shares // 2 + 1
    if not majority <= threshold < num_shares:
        raise SecAggConfigError(
            f"secagg-reconstruction-threshold must be a majority of the shares and below their "
            f"number ({majority} <= threshold <= {num_shares - 1} for secagg-num-shares "
            f"{num_shares}), got {threshold}"
        )
    if not (math.isfinite(timeout) and timeout > 0):
        raise SecAggConfigError(
            f"secagg-timeout must be a finite number of seconds (without one, a silent device "
            f"stalls the round forever), got {timeout!r}: use e.g. 120"
        )


def quantizer_clip_count(
    update: Sequence[np.ndarray],
    clipping_range: float,
    quantization_range: int,
    weight: float,
    max_weight: float,
) -> int:
    """How many coordinates Flower's quantizer would clip (|w x| > c), scaled exactly as it does."""
    ratio = round(weight / max_weight * quantization_range) / quantization_range
    clipped = (np.count_nonzero(np.abs(np.asarray(u) * ratio) > clipping_range) for u in update)
    return int(sum(clipped))


# -- device-added noise (dp-noise-source = "devices"; docs/design.md §4) -----------------------
# The chance that ANY coordinate of ANY device in ANY planned round is clamped into [0, T] (the
# Skellam noise's tail, union bound): the plan refuses a larger one. Clamping is the mechanism's
# only failure event; the ledger adds (1 + e^ε) times its bound to δ (see DeviceNoisePlan).
CLAMP_BUDGET = 1e-15
# Conditional rounding may inflate the l2 sensitivity Δ2 / (scale S) by at most this much.
ROUNDING_TOLERANCE = 0.01
MAX_RANGE_DOUBLINGS = 60  # c is searched among S-rounded-up powers of two, up to 2^60 times S
# NumPy's Poisson sampler loses accuracy for very large means (numpy 2.4: at mean 7.5e14 the
# variance comes out 13 % high; at 1e12 it is right, tests/shared/test_skellam.py): the plan
# widens c (a coarser step, hence a smaller mu in integer units) until each device's Skellam
# variance is at most this (each of its two Poisson means at most 2^40).
MAX_DEVICE_MU = 2.0**41


@dataclass(frozen=True)
class DeviceNoisePlan:
    """SecAgg+ with every device adding Skellam noise in the integer domain, before masking.

    A device scales its clipped update by ``scale`` = T / (2 c) (c, T powers of two: the float
    a device sends then quantizes back to exactly its integer, see :func:`encode_exactly`),
    rounds it conditionally to l2 <= ``l2`` (Δ2), adds Sk(``mu_device``) to every coordinate,
    shifts by T / 2 and clamps into [0, T]. With at least ``min_survivors`` devices in the sum,
    the noise present is Sk(mu_device * survivors) >= Sk(``mu_target``).
    """

    secagg: SecAggPlan  # clipping_range c and quantization_range T are powers of two here
    dimension: int  # d: coordinates of the model's global part
    scale: float  # integer units per float unit: T / (2 c)
    l2: float  # Δ2 after conditional rounding (integer units)
    l1: float  # Δ1 <= min(sqrt(d) Δ2, Δ2²)
    mu_target: float  # the noise (variance per coordinate, integer units) at min_survivors
    min_survivors: int
    rounds: int  # the rounds the clamp bound was checked for
    clamp_per_coordinate: float  # P(one coordinate of one device is clamped) <= this

    @property
    def mu_device(self) -> float:
        return self.mu_target / self.min_survivors

    def clamp_probability(self, rounds: int) -> float:
        """P(any coordinate of any device is clamped within ``rounds`` rounds) <= this."""
        return min(
            1.0, rounds * self.secagg.max_cohort * self.dimension * self.clamp_per_coordinate
        )

    def float_stddev(self, survivors: int) -> float:
        """Std of the noise on the float sum with ``survivors`` devices in it."""
        return math.sqrt(self.mu_device * survivors) / self.scale

    def sum_noise_norm(self, survivors: int) -> float:
        """How far ``survivors`` devices' noise and rounding can move their sum's l2 norm
        (float units): the norm of d Gaussian-like coordinates stays below (sqrt(d) + 12) std
        (with 10% slack for Skellam's tails), and each device's rounding below sqrt(d) steps."""
        root_d = math.sqrt(self.dimension)
        noise = 1.1 * (root_d + NOISE_NORM_SIGMAS) * self.float_stddev(survivors)
        return noise + survivors * root_d / self.scale


# Device noise: a sum's norm may exceed the clip bound by this many noise stds (plus sqrt(d)) before
# the server calls it wrong; P(the noise alone does it) is below e^-72.
NOISE_NORM_SIGMAS = 12.0


def _power_of_two_at_least(x: float) -> float:
    return 2.0 ** math.ceil(math.log2(x))


def mu_of_multiplier(z: float, bound: float) -> Callable[[float], float]:
    """mu (integer units) as a function of the scale for a noise of std z x bound in float units:
    what the server's N(0, (z S)^2) would be, in SecAgg+'s integers."""
    return lambda scale: (z * bound * scale) ** 2


def plan_device_noise(
    plan: SecAggPlan,
    dimension: int,
    noise_multiplier: float,
    min_survivors: int,
    rounds: int,
    mu_for: Callable[[float], float] | None = None,
    rounding_at: float | None = None,
) -> DeviceNoisePlan:
    """Scale, c, T, per-device mu and the sensitivities for device noise; refuse what is unsafe.

    ``noise_multiplier`` z sets the noise on the sum at ``min_survivors``: std z S in float
    units, as the server's N(0, (z S)^2). ``mu_for(scale)``, if given, returns the total mu in
    integer units instead (a target ε calibrates it; it depends on the scale through Δ).
    c is the smallest power of two >= S for which the clamping probability over ``rounds``
    rounds is at most :data:`CLAMP_BUDGET` and mu_device at most :data:`MAX_DEVICE_MU`.
    Refused with values that work: no such c before the rounding inflates Δ2 by more than 1 %
    (at ``rounding_at``, the smallest S the devices start from, if below the bound: adaptive
    clipping's plan holds its ceiling, and its rounding must stay fine where S starts).
    """
    if not 1 <= min_survivors <= plan.max_cohort:
        raise SecAggConfigError(
            f"dp-noise-min-survivors must be in [1, secagg-max-cohort {plan.max_cohort}], got "
            f"{min_survivors}"
        )

    finest = min(plan.bound, rounding_at or plan.bound)
    found = _search(
        plan,
        dimension,
        mu_for or mu_of_multiplier(noise_multiplier, plan.bound),
        min_survivors,
        rounds,
        finest,
    )
    if found is not None:
        return found
    t = plan.quantization_range
    where = (
        f"SecAgg+'s {t.bit_length() - 1}-bit range for a {dimension}-coordinate model and "
        f"secagg-max-cohort {plan.max_cohort}"
    )
    if mu_for is not None:  # a target ε chose the noise: only the protocol side can give
        raise SecAggConfigError(
            f"the device noise a target ε needs at {min_survivors} survivors cannot fit {where} "
            "without clamping or coarse rounding: lower secagg-max-cohort (a smaller modulus "
            'leaves T more bits), raise dp-user-target-epsilon, or use dp-noise-source = "server"'
        )
    low, high = 0.0, noise_multiplier  # the largest z that fits, by bisection
    for _ in range(50):
        mid = (low + high) / 2
        fits = (
            _search(
                plan, dimension, mu_of_multiplier(mid, plan.bound), min_survivors, rounds, finest
            )
            is not None
        )
        low, high = (mid, high) if fits else (low, mid)
    survivors = math.ceil(min_survivors * (noise_multiplier / low) ** 2) if low > 0 else None
    more = ""
    if survivors is not None and survivors <= plan.max_cohort:
        more = f" or dp-noise-min-survivors >= {survivors} (each device adds less)"
    raise SecAggConfigError(
        f"device noise of noise multiplier {noise_multiplier:g} at {min_survivors} survivors "
        f"cannot fit {where} without clamping or coarse rounding: use dp-user-noise-multiplier "
        f"<= {low * 0.999:.4g}{more}, lower secagg-max-cohort (a smaller modulus leaves T more "
        'bits), or dp-noise-source = "server"'
    )


def _search(
    plan: SecAggPlan,
    dimension: int,
    mu_for: Callable[[float], float],
    min_survivors: int,
    rounds: int,
    finest: float,
) -> DeviceNoisePlan | None:
    """The smallest power-of-two c that holds the noise (see :func:`plan_device_noise`)."""
    from shared import skellam  # the mechanism's math; imported here to keep the plan light

    bound, t = plan.bound, plan.quantization_range
    c = _power_of_two_at_least(bound * (1 + CLIP_MARGIN))
    for _ in range(MAX_RANGE_DOUBLINGS):
        scale = t / (2 * c)
        l2 = skellam.rounded_l2(bound * scale, dimension)
        if (
            skellam.rounded_l2(finest * scale, dimension)
            > (1 + ROUNDING_TOLERANCE) * finest * scale
        ):
            return None  # a wider range only makes the step coarser
        mu_target = mu_for(scale)
        mu_device = mu_target / min_survivors
        room = t / 2 - math.ceil(l2)  # |rounded coordinate| <= Δ2: the rest is for the noise
        per_coordinate = skellam.tail_bound(mu_device, room)
        clamp = rounds * plan.max_cohort * dimension * per_coordinate
        if clamp <= CLAMP_BUDGET and mu_device <= MAX_DEVICE_MU:
            return DeviceNoisePlan(
                secagg=replace(plan, clipping_range=c),
                dimension=dimension,
                scale=scale,
                l2=l2,
                l1=skellam.rounded_l1(l2, dimension),
                mu_target=mu_target,
                min_survivors=min_survivors,
                rounds=rounds,
                clamp_per_coordinate=per_coordinate,
            )
        c *= 2
    return None


def encode_exactly(k: np.ndarray, clipping_range: float, quantization_range: int) -> np.ndarray:
    """The float x that Flower's quantizer turns into exactly the integer k in [0, T].

    Flower computes ``stochastic_round((clip(x, -c, c) + c) * T / (2c))``. With c and T powers of
    two, x = k (2c / T) - c, x + c and (x + c) T / (2c) are exact in float64 (k < 2^31), and the
    stochastic rounding of an integer is that integer.
    """
    if not (_is_power_of_two(clipping_range) and _is_power_of_two(quantization_range)):
        raise ValueError(
            f"device noise needs SecAgg+'s clipping range ({clipping_range!r}) and quantization "
            f"range ({quantization_range!r}) to be powers of two: otherwise Flower's quantizer "
            "rounds the noised integers again"
        )
    return np.asarray(k, dtype=np.float64) * (2 * clipping_range / quantization_range) - (
        clipping_range
    )


def _is_power_of_two(x: float) -> bool:
    mantissa, _ = math.frexp(float(x))
    return x > 0 and mantissa == 0.5
