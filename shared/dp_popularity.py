"""The line a private model must clear: the popularity ranking released under the same DP.

A non-personalized ranking by item counts is cheap to make private, and at the privacy levels
where federated models struggle it may already be as good as they are; a private personalized
model is only worth shipping above it (issue 11, docs/design.md §4).

The release is one Gaussian mechanism on the vector of training counts (no subsampling, one step),
accounted with the same accountant as the models (``dp-accountant``), so its ε is comparable:

* **user level**: one user adds or removes their whole item set. Each user contributes at most
  ``max_items`` of their items (a uniformly random subset of a larger set, drawn with secret
  randomness), so the L2 sensitivity of the count vector is ``sqrt(max_items)``; the noise is
  N(0, (z sqrt(max_items))^2) per item.
* **interaction level**: one interaction moves one count by one: sensitivity 1, noise N(0, z^2).

z is the smallest noise multiplier the accountant says reaches the target ε at δ (sample rate 1,
one step); the reported ε is the accountant's for that z. ``max_items`` is fixed up front
(:data:`DEFAULT_MAX_ITEMS`), not tuned on the evaluation users (tuning it there would be a privacy
cost of its own).

Holds against: whoever sees the released ranking. Computed here in one process over the pooled
training split (a research baseline: who computes it sees the counts); a deployment would sum the
devices' capped indicator vectors under SecAgg+ with device-added noise.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from shared.privacy import epsilon as accounted_epsilon
from shared.privacy import noise_for_target
from shared.split import LeaveOneOut

UNITS = ("user", "interaction")
DEFAULT_MAX_ITEMS = 50  # a user's items counted at user level; fixed a priori, not tuned


@dataclass(frozen=True)
class DPPopularityRelease:
    """What was released and at what privacy: the facts a report prints beside the metrics."""

    unit: str
    target_epsilon: float
    epsilon: float  # the accountant's ε for the noise actually used (<= target)
    delta: float
    noise_multiplier: float  # z
    sensitivity: float  # L2: sqrt(max_items) at user level, 1 at interaction level
    noise_stddev: float  # z * sensitivity, per item count
    max_items: int | None  # user level only
    users_capped: int  # users with more than max_items training items (user level)

    def to_json(self) -> dict:
        return asdict(self)


def user_contribution(items: np.ndarray, max_items: int, rng: np.random.Generator) -> np.ndarray:
    """The distinct items one user adds one to: at most ``max_items`` (a random subset if more).

    Each is counted once, so one user's whole contribution has L2 norm <= sqrt(max_items): the
    user-level sensitivity the noise is calibrated to.
    """
    own = np.unique(items)
    if len(own) > max_items:
        own = np.sort(rng.choice(own, size=max_items, replace=False))
    return own


def _capped_counts(split: LeaveOneOut, max_items: int, rng: np.random.Generator) -> tuple:
    counts = np.zeros(split.num_items, dtype=np.float64)
    capped = 0
    for user in range(split.num_users):
        own = split.user_train_items(user)
        capped += len(np.unique(own)) > max_items
        counts[user_contribution(own, max_items, rng)] += 1.0
    return counts, int(capped)


def dp_popularity_scores(
    split: LeaveOneOut,
    target_epsilon: float,
    delta: float,
    unit: str,
    rng: np.random.Generator,
    max_items: int = DEFAULT_MAX_ITEMS,
    accountant: str = "rdp",
) -> tuple[np.ndarray, DPPopularityRelease]:
    """Noisy item counts released at ``target_epsilon`` for ``unit``; and what was released.

    ``rng`` draws the noise and the capping subsets: pass one seeded from
    :func:`shared.streams.secret_seed` unless a research run asks for reproducible noise.
    """
    if unit not in UNITS:
        raise ValueError(f"unknown DP unit {unit!r}: choose one of {', '.join(UNITS)}")
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"the target ε must be a positive number, got {target_epsilon!r}")
    if not 0 < delta < 1:
        raise ValueError(f"δ must be in (0, 1), got {delta!r}")
    if unit == "user":
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        counts, capped = _capped_counts(split, max_items, rng)
        sensitivity = math.sqrt(max_items)
    else:
        counts = np.bincount(split.train_items, minlength=split.num_items).astype(np.float64)
        capped, sensitivity = 0, 1.0
    with warnings.catch_warnings():
        # Opacus warns when its largest or smallest RDP order is optimal: ε is then a valid but
        # loose upper bound (the noise could be a little smaller); the same holds for the models.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        z = noise_for_target(float(target_epsilon), float(delta), 1.0, 1, accountant)
        eps = accounted_epsilon([(z, 1.0, 1)], delta, accountant)
    stddev = z * sensitivity
    noisy = counts + rng.normal(0.0, stddev, size=counts.shape)
    release = DPPopularityRelease(
        unit=unit,
        target_epsilon=float(target_epsilon),
        epsilon=eps,
        delta=float(delta),
        noise_multiplier=z,
        sensitivity=sensitivity,
        noise_stddev=stddev,
        max_items=max_items if unit == "user" else None,
        users_capped=capped,
    )
    return noisy, release
