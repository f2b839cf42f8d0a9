"""The Skellam mechanism: distributed integer noise under SecAgg+, and its accountant.

Why Skellam (Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private Federated
Learning", NeurIPS 2021, arXiv:2110.04995): the sum of independent Skellam variables is Skellam,
so the noise present after dropouts is exactly Skellam with the survivors' total and the accounting
of what is present is exact. The distributed discrete Gaussian's sum is not a discrete Gaussian
and needs an extra approximation term (Kairouz, Liu, Steinke 2021).

Parametrization (the paper's): ``Sk(mu)`` is ``Poisson(mu / 2) - Poisson(mu / 2)``, mean 0 and
variance ``mu`` per coordinate; ``Sk(mu_1) + Sk(mu_2) = Sk(mu_1 + mu_2)``. Everything is in the
integer domain: a float update x becomes ``round(x * scale)``.

Formulas implemented (docs/design.md §4):

* **RDP of the multi-dimensional Skellam mechanism** (paper, Theorem 3.5): for a query of
  integer l1 / l2 sensitivities Δ1, Δ2 and integer order α > 1,
  ``ε(α) <= α Δ2² / (2 mu) + min(((2α - 1) Δ2² + 6 Δ1) / (4 mu²), 3 Δ1 / (2 mu))``.
  The first term is the Gaussian mechanism's at the same variance; the min is the price of
  being discrete, and vanishes as mu grows with Δ fixed.
* **Conditional randomized rounding** (the paper's §4, from Kairouz, Liu, Steinke 2021,
  Theorem 22 of the arXiv version): each coordinate of the scaled vector (l2 norm <= c) is
  rounded up or down at random, unbiased, and the whole vector is re-drawn until its l2 norm is
  at most ``Δ2 = min(c + sqrt(d), sqrt(c² + d / 4 + sqrt(2 ln(1 / β)) (c + sqrt(d) / 2)))``;
  one draw fails with probability at most β. The bound is enforced, not probable, so β costs
  retries, not privacy. An integer vector has ``Δ1 <= min(sqrt(d) Δ2, Δ2²)``.
* **Poisson subsampling**: Zhu & Wang, "Poisson Subsampled Rényi Differential Privacy", ICML
  2019, Theorem 6 (the general upper bound, valid for any mechanism, integer α >= 2):
  ``ε'(α) <= 1/(α-1) log((1-q)^(α-1) (α q - q + 1) + C(α,2) q² (1-q)^(α-2) e^{ε(2)}
  + 3 Σ_{l=3..α} C(α,l) q^l (1-q)^(α-l) e^{(l-1) ε(l)})``, and never more than ε(α) itself.
* RDP adds over rounds (each round its own mu: the noise the survivors actually added) and is
  converted to (ε, δ) as Opacus' RDP accountant does (Balle et al. 2020, Theorem 21).

Plain Python and NumPy (Opacus only for the conversion); no Flower.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from shared.privacy import _opacus_accountants

# Integer orders only (the subsampling bound needs them); up to 256 so that small ε over many
# rounds still finds its optimal order inside the range.
ORDERS = (*range(2, 129), 144, 160, 192, 224, 256)
BETA = math.exp(-0.5)  # the rounding's per-draw failure probability (the paper's choice)
MAX_ROUNDING_DRAWS = 1000  # P(all fail) <= BETA**1000: never, unless the bound is wrong
# One round of one mechanism: (mu present in total, sampling rate q, Δ1, Δ2, rounds).
Entry = tuple[float, float, float, float, int]


def skellam_rdp(alpha: int, mu: float, l1: float, l2: float) -> float:
    """ε(α) of the Skellam mechanism Sk(mu) for sensitivities Δ1 = l1, Δ2 = l2 (Theorem 3.5)."""
    if mu <= 0:
        return math.inf
    gaussian = alpha * l2 * l2 / (2 * mu)
    discrete = min(((2 * alpha - 1) * l2 * l2 + 6 * l1) / (4 * mu * mu), 3 * l1 / (2 * mu))
    return gaussian + discrete


def subsampled_rdp(alpha: int, q: float, rdp: Callable[[int], float]) -> float:
    """Zhu & Wang (2019) Theorem 6: RDP at integer order α of ``rdp`` under Poisson rate q."""
    base = rdp(alpha)
    if q >= 1:
        return base
    if q <= 0:
        return 0.0
    log_q, log_1q = math.log(q), math.log1p(-q)
    terms = [
        (alpha - 1) * log_1q + math.log(alpha * q - q + 1),
        _log_comb(alpha, 2) + 2 * log_q + (alpha - 2) * log_1q + rdp(2),
    ]
    terms += [
        math.log(3) + _log_comb(alpha, j) + j * log_q + (alpha - j) * log_1q + (j - 1) * rdp(j)
        for j in range(3, alpha + 1)
    ]
    top = max(terms)
    bound = (top + math.log(sum(math.exp(t - top) for t in terms))) / (alpha - 1)
    return min(bound, base)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def rounded_l2(l2: float, dimension: int, beta: float = BETA) -> float:
    """Δ2 after conditional randomized rounding of a vector of l2 norm <= ``l2`` (integer units)."""
    first = l2 + math.sqrt(dimension)
    if beta <= 0:
        return first
    second = (
        l2 * l2
        + dimension / 4
        + math.sqrt(2 * math.log(1 / beta)) * (l2 + math.sqrt(dimension) / 2)
    )
    return min(first, math.sqrt(second))


def rounded_l1(l2_rounded: float, dimension: int) -> float:
    """Δ1 of an integer vector of l2 norm <= Δ2: min(sqrt(d) Δ2, Δ2²)."""
    return l2_rounded * min(math.sqrt(dimension), l2_rounded)


@lru_cache(maxsize=65536)
def round_rdp(mu: float, q: float, l1: float, l2: float) -> tuple[float, ...]:
    """One subsampled Skellam round's RDP at every order of :data:`ORDERS` (cached: the history
    recomputes the same few rounds for every ε it reports)."""
    cache: dict[int, float] = {}

    def rdp(alpha: int) -> float:
        if alpha not in cache:
            cache[alpha] = skellam_rdp(alpha, mu, l1, l2)
        return cache[alpha]

    return tuple(subsampled_rdp(a, q, rdp) for a in ORDERS)


def epsilon(entries: Iterable[Entry], delta: float) -> float:
    """(ε at δ) of the composition of every round in ``entries`` (0 for none)."""
    total = np.zeros(len(ORDERS))
    any_round = False
    for mu, q, l1, l2, rounds in entries:
        if rounds > 0:
            total += rounds * np.asarray(round_rdp(float(mu), float(q), float(l1), float(l2)))
            any_round = True
    if not any_round:
        return 0.0
    import warnings

    with warnings.catch_warnings():  # the optimal order at the range's edge is reported below
        warnings.simplefilter("ignore")
        eps, _ = _opacus_accountants().analysis.rdp.get_privacy_spent(
            orders=list(ORDERS), rdp=list(total), delta=delta
        )
    return float(eps)


def mu_for_target(
    target_epsilon: float,
    delta: float,
    q: float,
    rounds: int,
    scale: float,
    dimension: int,
    clip_norm: float,
) -> float:
    """The total mu (integer units) that reaches ``target_epsilon`` after ``rounds`` rounds.

    Binary search on log mu: ε falls monotonically as mu grows (every term of Theorem 3.5 does).
    """
    if target_epsilon <= 0:
        raise ValueError(f"target epsilon must be positive, got {target_epsilon}")
    l2 = rounded_l2(clip_norm * scale, dimension)
    l1 = rounded_l1(l2, dimension)

    def eps(mu: float) -> float:
        return epsilon([(mu, q, l1, l2, rounds)], delta)

    low, high = l2 * l2 * 1e-4, l2 * l2
    while eps(high) > target_epsilon:
        low, high = high, high * 16
        if high > l2 * l2 * 1e12:
            raise ValueError(f"no noise reaches epsilon {target_epsilon} in {rounds} rounds")
    for _ in range(60):
        mid = math.sqrt(low * high)
        if eps(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    return high


def tail_bound(mu: float, a: float) -> float:
    """P(|Sk(mu)| > a) <= 2 exp(mu (sqrt(1 + (a/mu)²) - 1) - a asinh(a / mu)) (Chernoff).

    Sk(mu)'s moment generating function is exp(mu (cosh t - 1)); the bound is its Chernoff bound
    at the optimal t = asinh(a / mu), twice for the two tails.
    """
    if a <= 0:
        return 1.0
    if mu <= 0:
        return 0.0
    r = a / mu
    return min(1.0, 2 * math.exp(mu * (math.sqrt(1 + r * r) - 1) - a * math.asinh(r)))


def sample(rng: np.random.Generator, mu: float, size: int) -> np.ndarray:
    """``size`` independent draws of Sk(mu), as int64."""
    return rng.poisson(mu / 2, size).astype(np.int64) - rng.poisson(mu / 2, size).astype(np.int64)


def conditional_round(scaled: np.ndarray, bound: float, rng: np.random.Generator) -> np.ndarray:
    """Unbiased randomized rounding of ``scaled`` to integers, re-drawn until l2 <= ``bound``."""
    floor = np.floor(scaled)
    frac = scaled - floor
    for _ in range(MAX_ROUNDING_DRAWS):
        rounded = (floor + (rng.random(scaled.shape) < frac)).astype(np.int64)
        if float(np.sqrt(np.sum(np.square(rounded, dtype=np.float64)))) <= bound:
            return rounded
    raise ValueError(
        f"conditional rounding found no vector of norm <= {bound:.6g} in {MAX_ROUNDING_DRAWS} "
        "draws: the update was not clipped to the bound the rounding assumes"
    )


@dataclass(frozen=True)
class SkellamHistory:
    """Every round of one Skellam mechanism; immutable and serializable (as PrivacyHistory)."""

    entries: tuple[Entry, ...] = ()

    def add(self, mu: float, q: float, l1: float, l2: float, rounds: int = 1) -> SkellamHistory:
        if rounds <= 0:
            return self
        key = (float(mu), float(q), float(l1), float(l2))
        if self.entries and self.entries[-1][:4] == key:
            last = self.entries[-1]
            return SkellamHistory((*self.entries[:-1], (*key, last[4] + rounds)))
        return SkellamHistory((*self.entries, (*key, int(rounds))))

    def replace_last_round(self, mu: float, q: float, l1: float, l2: float) -> SkellamHistory:
        """The last round accounted again with the noise that turned out to be present."""
        if not self.entries:
            raise ValueError("no round to replace: the round was never accounted")
        *rest, last = self.entries
        kept = tuple(rest) + ((*last[:4], last[4] - 1),) if last[4] > 1 else tuple(rest)
        return SkellamHistory(kept).add(mu, q, l1, l2, 1)

    def epsilon(self, delta: float) -> float:
        return epsilon(self.entries, delta)

    @property
    def steps(self) -> int:
        return sum(e[4] for e in self.entries)

    def to_array(self) -> np.ndarray:
        return np.array(self.entries, dtype=np.float64).reshape(-1, 5)

    @classmethod
    def from_array(cls, array: np.ndarray) -> SkellamHistory:
        array = np.asarray(array, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != 5 or not np.isfinite(array).all():
            raise ValueError(f"a Skellam history is a finite (n, 5) array, got {array.shape}")
        return cls(tuple((mu, q, l1, l2, int(n)) for mu, q, l1, l2, n in array))
