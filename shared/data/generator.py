"""The seeded synthetic generator: implicit feedback with learnable structure, no files.

The size (``synthetic-users``, ``synthetic-items``), the run ``seed`` and the data's shape
(``synthetic-shape``) are the options. A shape is a named, fixed set of parameters (latent size,
activity distribution, popularity skew), because results measured on synthetic data are compared
across runs only while the shape stays the same:

- ``default``: the shape every synthetic result so far was measured on (10-150 items a user);
- ``movielens``: fitted to MovieLens-100K's marginals (`simulations/research/data_shape.py`
  prints both side by side): items per user log-normal with ML-100K's log-mean and log-sd, at
  least 20 (ML's own floor) and at most 740; item popularity log-normal (a Zipf curve cannot
  give ML's heavy head and thin tail at once) with log-sd 1.8, which at ML-100K's size puts
  0.427 of the interactions on the top 10% of items (ML-100K: 0.427) and a Gini of item degrees
  of 0.603 (0.629). What it does not match: the held-out item is a random positive (ML's is
  the latest, less often a popular one), so popularity ranks it better (HR@10 0.573 against
  0.421); and 51 of 1,682 items are never drawn (ML lists only rated items). For the
  population-scale rows (10,000 and 100,000 users).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shared.data.interactions import Interactions
from shared.streams import synthetic_rng


@dataclass(frozen=True)
class Shape:
    """The parameters of one synthetic shape (changing one changes every result seeded on it)."""

    latent_dim: int  # size of the users' and items' Gaussian taste factors
    min_per_user: int  # fewest interactions a user has (>= 2: one held out, one trained on)
    max_per_user: int  # most interactions a user has (before the catalogue cap)
    popularity_exponent: float  # zipf: popularity (rank + 1) ** -exponent; lognormal: log-sd
    activity_sigma: float  # log-normal spread of per-user interaction counts
    activity_log_mean: float | None = None  # None: midway between log(min) and log(max)
    affinity_scale: float = 2.0  # std of the taste logit
    popularity: str = "zipf"  # "zipf" or "lognormal" (a heavy head AND a thin tail, as ML's)


MOVIELENS_EXPONENT = 1.8  # log-sd of item popularity, fitted (module docstring)

SHAPES = {
    "default": Shape(
        latent_dim=8, min_per_user=10, max_per_user=150, popularity_exponent=0.8,
        activity_sigma=0.8,
    ),
    # ML-100K: log items-per-user mean 4.27, sd 0.88, min 20, max 737 (data_shape.py)
    "movielens": Shape(
        latent_dim=8, min_per_user=20, max_per_user=740, popularity_exponent=MOVIELENS_EXPONENT,
        activity_sigma=0.88, activity_log_mean=4.27, popularity="lognormal",
    ),
}  # fmt: skip
SHAPE_NAMES = tuple(SHAPES)
# The default shape's parameters by their old names (tests and readers of old results use them).
LATENT_DIM = SHAPES["default"].latent_dim
MIN_PER_USER = SHAPES["default"].min_per_user
MAX_PER_USER = SHAPES["default"].max_per_user
POPULARITY_EXPONENT = SHAPES["default"].popularity_exponent

_SYNTH_T0 = 880_000_000  # ~Nov 1997, MovieLens-like epoch seconds
_SYNTH_START_SPREAD = 2 * 365 * 86_400  # users join over two years
_SYNTH_MEAN_GAP = 6 * 3_600  # mean seconds between a user's consecutive interactions
_SYNTH_MIN_NEGATIVES = 100  # 99 sampled negatives + 1 held-out positive must always exist


def _fewest_items(per_user: int) -> int:
    """The smallest catalogue whose cap allows ``per_user`` items a user (see synthetic)."""
    return per_user + 1 if per_user + 1 <= 110 else per_user + _SYNTH_MIN_NEGATIVES


def synthetic(
    num_users: int = 300, num_items: int = 500, seed: int = 0, shape: str = "default"
) -> Interactions:
    """Seeded synthetic implicit feedback with learnable structure, of a named :data:`SHAPES`.

    Users and items get Gaussian latent factors of size ``latent_dim``; items also get a
    Zipf-like popularity ``(rank+1) ** -popularity_exponent`` over a random ranking. Each user's
    activity is log-normal, clipped to ``[min_per_user, max_per_user]`` and -- so that every user
    keeps at least 100 unseen items (99 sampled negatives plus slack for a held-out positive) --
    to at most ``num_items - 100`` items when ``num_items > 110`` (``num_items - 1`` otherwise).
    Items are drawn without replacement with probability proportional to
    ``popularity * exp(affinity)`` (Gumbel top-k), then placed in random order on strictly
    increasing per-user timestamps. ``num_items`` is kept even if some item is never drawn, and
    raw ids are ``0..n-1``. The same arguments always give identical output.
    """
    if shape not in SHAPES:
        raise ValueError(f"synthetic-shape must be one of {', '.join(SHAPES)}; got {shape!r}")
    form = SHAPES[shape]
    if num_users < 1 or num_items < 2:
        raise ValueError(f"need num_users >= 1 and num_items >= 2, got {num_users}, {num_items}")
    cap = num_items - _SYNTH_MIN_NEGATIVES if num_items > 110 else num_items - 1
    hi = min(form.max_per_user, cap)
    if hi < form.min_per_user:
        raise ValueError(
            f"num_items={num_items} allows at most {cap} items per user, fewer than the "
            f"{shape} shape's minimum of {form.min_per_user}: set synthetic-items to at least "
            f"{_fewest_items(form.min_per_user)}"
        )
    rng = synthetic_rng(seed)
    user_f = rng.standard_normal((num_users, form.latent_dim))
    item_f = rng.standard_normal((num_items, form.latent_dim))
    # Random ranking so that an item's id says nothing about its popularity.
    if form.popularity == "zipf":
        log_pop = -form.popularity_exponent * np.log1p(rng.permutation(num_items))
    else:  # log-normal popularity: log_pop ~ N(0, exponent^2), independent per item
        log_pop = form.popularity_exponent * rng.standard_normal(num_items)
    mu = form.activity_log_mean
    if mu is None:
        mu = 0.5 * (math.log(form.min_per_user) + math.log(hi))
    counts = np.exp(rng.normal(mu, form.activity_sigma, num_users))
    counts = np.clip(np.rint(counts), form.min_per_user, hi).astype(np.int64)

    scale = form.affinity_scale / math.sqrt(form.latent_dim)
    block = max(1, (1 << 21) // num_items)  # bound the dense score matrix to ~16 MB
    chosen: list[np.ndarray] = []
    for lo in range(0, num_users, block):
        sl = slice(lo, min(lo + block, num_users))
        noise = rng.gumbel(size=(sl.stop - lo, num_items))
        logits = log_pop + scale * (user_f[sl] @ item_f.T) + noise
        k = int(counts[sl].max())
        # Gumbel top-k == sampling k items without replacement proportionally to exp(logit).
        top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(logits, top, 1), 1), 1)
        chosen.append(top[np.arange(k) < counts[sl, None]])
    item = np.concatenate(chosen).astype(np.int64)
    user = np.repeat(np.arange(num_users, dtype=np.int64), counts)
    # Shuffle each user's items in time so the latest one is a random positive, not the weakest.
    item = item[np.lexsort((rng.random(item.size), user))]
    gaps = 1 + np.floor(rng.exponential(_SYNTH_MEAN_GAP, item.size)).astype(np.int64)
    starts = _SYNTH_T0 + rng.integers(0, _SYNTH_START_SPREAD, num_users)
    csum = np.cumsum(gaps)
    offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
    before = np.where(offsets > 0, csum[offsets - 1], 0)  # gap total before each user's block
    timestamp = starts[user] + csum - np.repeat(before, counts)
    ids_u = np.arange(num_users, dtype=np.int64)
    ids_i = np.arange(num_items, dtype=np.int64)
    return Interactions(user, item, timestamp, num_users, num_items, ids_u, ids_i)
