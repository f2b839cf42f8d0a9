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
from collections.abc import Sequence
from dataclasses import dataclass

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
