"""An empirical lower bound on ε from one training run (Steinke, Nasr, Jagielski, NeurIPS 2023).

The audit: m canaries, each included in training independently with probability 1/2. After
training, an attacker scores every canary from what it sees, guesses "in" for the r_in most
confident and "out" for the r_out least confident (r = r_in + r_out guesses; the rest abstain),
and v of the r guesses are right. If the run were (ε, δ)-DP, the paper's Theorem 5.2 (and its
Appendix D algorithm) bounds the chance of v or more correct guesses:

    P[W >= v] <= P[Bin(r, p) >= v] + 2 m δ · max_{1 <= i <= v} P[v - i <= Bin(r, p) < v] / i,
    with p = e^ε / (1 + e^ε), the accuracy of ε-randomized response.

The lower bound at confidence 1 - β is the largest ε for which that p-value is still below β:
an (ε, δ)-DP run would produce this many correct guesses with probability under β. A run whose
reported ε is below the bound has a bug in its mechanism or its accounting.

Pure math, no dependencies beyond the standard library: binomial tails in log space (exact for
the few thousand guesses an audit makes).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

CONFIDENCE = 0.95  # the paper's default: bounds hold with probability 0.95
SEARCH_STEPS = 60  # bisection steps on ε: far below any precision a report prints


def _log_binomial_pmf(k: int, n: int, log_p: float, log_q: float) -> float:
    return (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * log_p
        + (n - k) * log_q
    )


def _log_sum(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def _binomial_pmfs(n: int, epsilon: float) -> list[float]:
    """P[Bin(n, p) = k] for k = 0..n with p = e^ε / (1 + e^ε), computed in log space."""
    log_p = -math.log1p(math.exp(-epsilon))  # log p
    log_q = -epsilon + log_p  # log (1 - p) = log(e^-ε p)
    logs = [_log_binomial_pmf(k, n, log_p, log_q) for k in range(n + 1)]
    return [math.exp(v) for v in logs]


def p_value(canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """The chance that an (ε, δ)-DP run lets ``correct`` or more of ``guesses`` be right."""
    if not 0 <= correct <= guesses <= canaries:
        raise ValueError(
            f"need 0 <= correct ({correct}) <= guesses ({guesses}) <= canaries ({canaries})"
        )
    if not (epsilon >= 0 and 0 <= delta <= 1):
        raise ValueError(f"need ε >= 0 and δ in [0, 1], got ε {epsilon!r}, δ {delta!r}")
    pmf = _binomial_pmfs(guesses, epsilon)
    tail = math.fsum(pmf[correct:])  # P[Bin(r, p) >= v]
    worst, window = 0.0, 0.0
    for i in range(1, correct + 1):
        window += pmf[correct - i]  # P[v - i <= Bin(r, p) < v]
        worst = max(worst, window / i)
    return min(1.0, tail + 2 * canaries * delta * worst)


def epsilon_lower_bound(
    canaries: int, guesses: int, correct: int, delta: float, confidence: float = CONFIDENCE
) -> float:
    """The largest ε an (ε, δ)-DP run is refuted at: p_value(ε) < 1 - confidence; 0 if none."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    beta = 1 - confidence
    if p_value(canaries, guesses, correct, 0.0, delta) >= beta:
        return 0.0  # not even ε = 0 is refuted: the guesses are no better than coin flips
    low, high = 0.0, 1.0
    while p_value(canaries, guesses, correct, high, delta) < beta:
        low, high = high, 2 * high  # the p-value grows with ε: bracket its crossing
        if high > 1e4:
            return math.inf  # refuted at every ε: only possible with δ = 0 and a perfect attack
    for _ in range(SEARCH_STEPS):
        middle = (low + high) / 2
        if p_value(canaries, guesses, correct, middle, delta) < beta:
            low = middle
        else:
            high = middle
    return low


@dataclass(frozen=True)
class AuditGuesses:
    """The guesses an attacker made from canary scores, and how many were right."""

    canaries: int
    guesses: int
    correct: int
    guessed_in: int
    guessed_out: int

    def to_json(self) -> dict:
        return asdict(self)


def guess_from_scores(scores, included, guess_in: int, guess_out: int) -> AuditGuesses:
    """Guess "in" for the ``guess_in`` highest scores and "out" for the ``guess_out`` lowest.

    ``included[i]`` says whether canary i was really in training (the coin the audit flipped).
    Ties are broken by canary index, a rule fixed before the scores exist.
    """
    scores, included = list(scores), [bool(x) for x in included]
    if len(scores) != len(included):
        raise ValueError(f"{len(scores)} scores for {len(included)} canaries")
    if guess_in < 0 or guess_out < 0 or guess_in + guess_out > len(scores):
        raise ValueError(
            f"cannot make {guess_in} 'in' and {guess_out} 'out' guesses about "
            f"{len(scores)} canaries"
        )
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    outs = order[:guess_out]
    ins = order[len(order) - guess_in :] if guess_in else []
    correct = sum(included[i] for i in ins) + sum(not included[i] for i in outs)
    return AuditGuesses(len(scores), guess_in + guess_out, correct, guess_in, guess_out)
