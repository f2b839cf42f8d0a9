"""Item-inference audit: what an honest-but-curious server learns about a user's items.

The server follows the protocol but tries to recover each user's interacted items from what it is
given. Its attack scores every item by the change of the item's embedding rows (over every item
table) and guesses the n highest-scoring items, n being the user's number of training items. Two
scores:

* ``norm``: the L2 norm of the rows' change. Weak: the sampled negatives' rows change too, about
  as much under Adam.
* ``direction``: the change projected on its dominant direction (top singular vector of the
  changed rows). A positive's rows move towards the user's (private) embedding, a negative's away
  from it, so the two land on opposite sides; positives are the smaller side (a device samples
  several negatives per positive), which fixes the sign. This is the attack that matters.
 Without SecAgg+ the server scores each device's own update; with SecAgg+ it holds
only the cohort's sum, so every member of a cohort gets the same guess. The baseline guesses the
n most popular items, which needs no update at all. Ties are broken at random (seeded), so an
all-zero score is no better than a guess.

Pure NumPy; the driver (``simulations/research/audit.py``) produces the updates with the devices'
code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

ATTACKS = ("direction", "norm")


# (cohort sum, single update) labels, without and with the devices' noise shares
VIEWS = {
    False: ("cohort sum (SecAgg+)", "each device's update (no SecAgg+)"),
    True: ("cohort sum, device-noised (SecAgg+)", "one noised update (SecAgg+ hides it)"),
}


def item_scores(
    update: Sequence[np.ndarray], item_tables: Sequence[int], attack: str = "direction"
) -> np.ndarray:
    """Per item: how strongly its rows' change says "interacted" (see the module docstring)."""
    rows = np.concatenate([np.asarray(update[i], dtype=np.float64) for i in item_tables], axis=1)
    if attack == "norm":
        return np.linalg.norm(rows, axis=1)
    if attack != "direction":
        raise ValueError(f"unknown attack {attack!r}: choose one of {', '.join(ATTACKS)}")
    changed = np.abs(rows).sum(axis=1) > 0
    if not changed.any():
        return np.zeros(len(rows))
    changed_rows = rows[changed]
    direction = np.linalg.eigh(changed_rows.T @ changed_rows)[1][:, -1]  # top singular vector
    scores = rows @ direction
    if (scores[changed] > 0).sum() > (scores[changed] < 0).sum():
        scores = -scores  # positives are the minority side
    return scores


def top_n(scores: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """The n highest scores' indices; ties in random order."""
    order = rng.permutation(len(scores))
    return order[np.argsort(-scores[order], kind="stable")[:n]]


def precision(guess: np.ndarray, truth: np.ndarray) -> float:
    return len(np.intersect1d(guess, truth)) / len(truth)


@dataclass
class Tally:
    """Per-user precision@n of one view of the updates under one attack."""

    view: str
    cohort: int
    attack: str
    values: list[float]

    def summary(self) -> dict:
        v = np.asarray(self.values)
        return {
            "view": self.view,
            "cohort": self.cohort,
            "attack": self.attack,
            "users": len(v),
            "precision_mean": float(v.mean()),
            "precision_median": float(np.median(v)),
            "precision_p90": float(np.quantile(v, 0.9)),
        }


def audit(
    updates: Iterable[tuple[int, list[np.ndarray]]],
    truth: dict[int, np.ndarray],
    item_tables: Sequence[int],
    popularity: np.ndarray,
    cohorts: Sequence[int],
    seed: int = 0,
    noised: bool = False,
) -> list[dict]:
    """Precision@n per user: each update, cohort sums of each size, popularity baseline.

    ``noised``: the updates carry the devices' own noise shares (device-added noise, which runs
    under SecAgg+ only, so a single update is what SecAgg+ hides from the server).

    ``updates`` yields (user, update) in cohort order: consecutive users form the cohorts (the
    caller shuffles). Only running cohort sums of the item tables are kept, never all updates.
    """
    rng = np.random.default_rng((seed, 11))
    tallies: dict[tuple[int, str], Tally] = {}
    for k in (1, *cohorts):
        for attack in ATTACKS:
            view = VIEWS[noised][k == 1]
            tallies[k, attack] = Tally(view, k, attack, [])
    popular = Tally("most popular items (baseline)", 0, "popularity", [])
    pending: dict[int, tuple[list[np.ndarray] | None, list[int]]] = {k: (None, []) for k in cohorts}

    def score(k: int, tables: list[np.ndarray], members: list[int]) -> None:
        for attack in ATTACKS:
            scores = item_scores(tables, range(len(tables)), attack)
            for user in members:
                guess = top_n(scores, len(truth[user]), rng)
                tallies[k, attack].values.append(precision(guess, truth[user]))

    for user, update in updates:
        tables = [np.asarray(update[i], dtype=np.float64) for i in item_tables]
        score(1, tables, [user])
        popular.values.append(precision(top_n(popularity, len(truth[user]), rng), truth[user]))
        for k in cohorts:
            total, members = pending[k]
            total = tables if total is None else [t + u for t, u in zip(total, tables, strict=True)]
            pending[k] = (total, [*members, user])
            if len(pending[k][1]) == k:
                score(k, *pending[k])
                pending[k] = (None, [])
    for k in cohorts:  # the last, smaller cohort
        if pending[k][1]:
            score(k, *pending[k])
    return [t.summary() for t in (*tallies.values(), popular)]


def table(rows: list[dict]) -> str:
    """A short plain-text table of the audit."""
    head = f"{'view':<36} {'cohort':>6} {'attack':>10} {'users':>6}"
    lines = [f"{head} {'mean':>7} {'median':>7} {'p90':>7}"]
    for r in rows:
        cohort = r["cohort"] or "-"
        lines.append(
            f"{r['view']:<36} {cohort:>6} {r['attack']:>10} {r['users']:>6} "
            f"{r['precision_mean']:>7.3f} "
            f"{r['precision_median']:>7.3f} {r['precision_p90']:>7.3f}"
        )
    return "\n".join(lines)
