"""The seeded synthetic generator: implicit feedback with learnable structure, no files.

Only the size (``synthetic-users``, ``synthetic-items``) and the run ``seed`` are options; the
shape of the data (latent size, activity range, popularity skew) is fixed below, because results
measured on synthetic data are compared across runs only while that shape stays the same.
"""

from __future__ import annotations

import math

import numpy as np

from shared.data.interactions import Interactions
from shared.streams import synthetic_rng

# The shape of every synthetic data set (changing one changes every seeded synthetic result).
LATENT_DIM = 8  # size of the users' and items' Gaussian taste factors
MIN_PER_USER = 10  # fewest interactions a user has (>= 2: one to hold out, one to train on)
MAX_PER_USER = 150  # most interactions a user has (before the catalogue cap below)
POPULARITY_EXPONENT = 0.8  # Zipf-like popularity (rank + 1) ** -POPULARITY_EXPONENT

_SYNTH_T0 = 880_000_000  # ~Nov 1997, MovieLens-like epoch seconds
_SYNTH_START_SPREAD = 2 * 365 * 86_400  # users join over two years
_SYNTH_MEAN_GAP = 6 * 3_600  # mean seconds between a user's consecutive interactions
_SYNTH_AFFINITY_SCALE = 2.0  # std of the taste logit; popularity logits span ~5 for 500 items
_SYNTH_ACTIVITY_SIGMA = 0.8  # log-normal spread of per-user interaction counts
_SYNTH_MIN_NEGATIVES = 100  # 99 sampled negatives + 1 held-out positive must always exist


def synthetic(num_users: int = 300, num_items: int = 500, seed: int = 0) -> Interactions:
    """Seeded synthetic implicit feedback with learnable structure.

    Users and items get Gaussian latent factors of size :data:`LATENT_DIM`; items also get a
    Zipf-like popularity ``(rank+1) ** -POPULARITY_EXPONENT`` over a random ranking. Each user's
    activity is log-normal, clipped to ``[MIN_PER_USER, MAX_PER_USER]`` and -- so that every user
    keeps at least 100 unseen items (99 sampled negatives plus slack for a held-out positive) --
    to at most ``num_items - 100`` items when ``num_items > 110`` (``num_items - 1`` otherwise).
    Items are drawn without replacement with probability proportional to
    ``popularity * exp(affinity)`` (Gumbel top-k), then placed in random order on strictly
    increasing per-user timestamps. ``num_items`` is kept even if some item is never drawn, and
    raw ids are ``0..n-1``. The same arguments always give identical output.
    """
    if num_users < 1 or num_items < 2:
        raise ValueError(f"need num_users >= 1 and num_items >= 2, got {num_users}, {num_items}")
    cap = num_items - _SYNTH_MIN_NEGATIVES if num_items > 110 else num_items - 1
    hi = min(MAX_PER_USER, cap)
    if hi < MIN_PER_USER:
        raise ValueError(
            f"num_items={num_items} allows at most {cap} items per user, fewer than "
            f"MIN_PER_USER={MIN_PER_USER}: set synthetic-items to at least {MIN_PER_USER + 1}"
        )
    rng = synthetic_rng(seed)
    user_f = rng.standard_normal((num_users, LATENT_DIM))
    item_f = rng.standard_normal((num_items, LATENT_DIM))
    # Random ranking so that an item's id says nothing about its popularity.
    log_pop = -POPULARITY_EXPONENT * np.log1p(rng.permutation(num_items))
    mu = 0.5 * (math.log(MIN_PER_USER) + math.log(hi))
    counts = np.exp(rng.normal(mu, _SYNTH_ACTIVITY_SIGMA, num_users))
    counts = np.clip(np.rint(counts), MIN_PER_USER, hi).astype(np.int64)

    scale = _SYNTH_AFFINITY_SCALE / math.sqrt(LATENT_DIM)
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
