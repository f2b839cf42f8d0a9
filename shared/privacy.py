"""Privacy accounting (docs/design.md §4): pure functions over Opacus' accountants, plus a history.

A mechanism run is a history of ``(noise_multiplier, sample_rate, steps)`` entries: every
Poisson-subsampled Gaussian step ever taken. ε is computed from the WHOLE history, so a device's
ε composes over every round it trained (never reset per round), and a history restored from
storage gives the identical ε. The same functions serve the server's user-level accountant,
with one entry per round.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from types import ModuleType

import numpy as np

from shared.quiet import import_opacus_quietly

ACCOUNTANTS = ("rdp", "prv")
Entry = tuple[float, float, int]  # (noise multiplier, sample rate, steps)


@cache
def _opacus_accountants() -> ModuleType:
    # Imported on first use: Opacus costs seconds of start-up, and a deployed device starts a
    # fresh process for every message (most of which, e.g. SecAgg+ stages, never account).
    import_opacus_quietly()
    import opacus.accountants
    import opacus.accountants.analysis.rdp
    import opacus.accountants.utils

    return opacus.accountants


def _accountant(name: str):
    if name == "rdp":
        return _opacus_accountants().RDPAccountant()
    if name == "prv":
        return _opacus_accountants().PRVAccountant()
    raise ValueError(f"unknown accountant {name!r}: choose one of {', '.join(ACCOUNTANTS)}")


def epsilon(history: Iterable[Entry], delta: float, accountant: str = "rdp") -> float:
    """ε after every step in ``history`` at the given δ (0.0 for an empty history).

    RDP: the value Opacus' ``RDPAccountant.get_epsilon`` returns, bit for bit, computed from
    memoized one-step RDP curves (:func:`_one_step_rdp`). Opacus recomputes every entry's curve
    at its 150 orders on every call, 0.1–0.3 s, and a DP round asks two or three times per
    device; a device's (σ, q) is the same every round (q depends only on its data size), so
    after its first round the curve is a lookup and ε is one multiply-add and a minimum.
    """
    entries = [(float(s), float(q), int(n)) for s, q, n in history if n > 0]
    if not entries:
        return 0.0
    if accountant == "rdp":
        analysis = _opacus_accountants().analysis.rdp
        # Opacus: sum([compute_rdp(q, σ, n, orders) ...]) with compute_rdp = curve * n
        rdp = sum([_one_step_rdp(s, q) * n for s, q, n in entries])
        orders = _opacus_accountants().RDPAccountant.DEFAULT_ALPHAS
        return float(analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])
    acc = _accountant(accountant)
    acc.history = entries
    return float(acc.get_epsilon(delta=delta))


@lru_cache(maxsize=65536)
def _one_step_rdp(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """The RDP of one Poisson-subsampled Gaussian step at Opacus' default orders (read-only)."""
    accountants = _opacus_accountants()
    curve = accountants.analysis.rdp.compute_rdp(
        q=sample_rate,
        noise_multiplier=noise_multiplier,
        steps=1,
        orders=accountants.RDPAccountant.DEFAULT_ALPHAS,
    )
    curve.setflags(write=False)
    return curve


@lru_cache(maxsize=4096)
def noise_for_target(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The noise multiplier σ that reaches ``target_epsilon`` after ``steps`` steps at rate q.

    Cached: Opacus' search takes seconds, and every round of every device asks again with one
    of a few (q, steps) pairs (they depend only on its data size).
    """
    if target_epsilon <= 0:
        raise ValueError(f"target epsilon must be positive, got {target_epsilon}")
    return float(
        _opacus_accountants().utils.get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
        )
    )


def planned_participations(rounds: int, clients_per_round: int, population: int) -> int:
    """Rounds a device plans its budget for: the binomial mean plus two standard deviations.

    Flower samples a fixed K of the N devices each round, so the number of rounds one device
    trains in is binomial(rounds, K / N); planning for the mean alone would leave about half of
    the devices at their cap before the run ends.
    """
    q = clients_per_round / population
    return max(1, math.ceil(rounds * q + 2 * math.sqrt(rounds * q * (1 - q))))


def clip_update(update: Sequence[np.ndarray], clip_norm: float) -> tuple[list[np.ndarray], float]:
    """Scale a whole update down to L2 norm ``clip_norm`` if larger; returns (clipped, norm).

    A zero update (a device that did not train) stays zero.
    """
    norm = float(np.sqrt(sum(float(np.sum(np.square(u, dtype=np.float64))) for u in update)))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return [np.asarray(u) * np.asarray(scale, dtype=np.asarray(u).dtype) for u in update], norm


@dataclass(frozen=True)
class PrivacyHistory:
    """Every subsampled Gaussian step of one mechanism; immutable, mergeable, serializable."""

    entries: tuple[Entry, ...] = ()

    def add(self, noise_multiplier: float, sample_rate: float, steps: int) -> PrivacyHistory:
        if steps <= 0:
            return self
        if self.entries and self.entries[-1][:2] == (noise_multiplier, sample_rate):
            # Same mechanism again: one entry with more steps (what Opacus does too).
            last = self.entries[-1]
            return PrivacyHistory((*self.entries[:-1], (last[0], last[1], last[2] + steps)))
        return PrivacyHistory((*self.entries, (noise_multiplier, sample_rate, int(steps))))

    def epsilon(self, delta: float, accountant: str = "rdp") -> float:
        return epsilon(self.entries, delta, accountant)

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self.entries)

    def to_array(self) -> np.ndarray:
        return np.array(self.entries, dtype=np.float64).reshape(-1, 3)

    @classmethod
    def from_array(cls, array: np.ndarray) -> PrivacyHistory:
        array = np.asarray(array, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != 3 or not np.isfinite(array).all():
            raise ValueError(f"a privacy history is a finite (n, 3) array, got shape {array.shape}")
        return cls(tuple((float(s), float(q), int(n)) for s, q, n in array))
