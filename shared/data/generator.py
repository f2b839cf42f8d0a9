"""The seeded synthetic generator: implicit feedback with learnable structure, no files."""

from __future__ import annotations

import math

import numpy as np

from shared.data.interactions import Interactions
from shared.streams import synthetic_rng

_SYNTH_T0 = 880_000_000  # ~Nov 1997, MovieLens-like epoch seconds
_SYNTH_START_SPREAD = 2 * 365 * 86_400  # users join over two years
_SYNTH_MEAN_GAP = 6 * 3_600  # mean seconds between a user's consecutive interactions
_SYNTH_AFFINITY_SCALE = 2.0  # std of the taste logit; popularity logits span ~5 for 500 items
_SYNTH_ACTIVITY_SIGMA = 0.8  # log-normal spread of per-user interaction counts
_SYNTH_MIN_NEGATIVES = 100  # 99 sampled negatives + 1 held-out positive must always exist


def synthetic(
    num_users: int = 300,
    num_items: int = 500,
    seed: int = 0,
    *,
    dim: int = 8,
    min_per_user: int = 10,
    max_per_user: int = 150,
    popularity_exponent: float = 0.8,
) -> Interactions:
    """Seeded synthetic implicit feedback with learnable structure.

    Users and items get Gaussian latent factors of size ``dim``; items also get a Zipf-like
    popularity ``(rank+1) ** -popularity_exponent`` over a random ranking. Each user's activity is
    log-normal, clipped to ``[min_per_user, max_per_user]`` and -- so that every user keeps at
    least 100 unseen items (99 sampled negatives plus slack for a held-out positive) -- to at
    most ``num_items - 100`` items when ``num_items > 110`` (``num_items - 1`` otherwise). Items
    are drawn without replacement with probability proportional to
    ``popularity * exp(affinity)`` (Gumbel top-k), then placed in random order on strictly
    increasing per-user timestamps. ``num_items`` is kept even if some item is never drawn, and
    raw ids are ``0..n-1``. The same arguments always give identical output.
    """
    if num_users < 1 or num_items < 2:
        raise ValueError(f"need num_users >= 1 and num_items >= 2, got {num_users}, {num_items}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if min_per_user < 2:
        raise ValueError(f"min_per_user must be >= 2 (train + held-out), got {min_per_user}")
    if max_per_user < min_per_user:
        raise ValueError(f"max_per_user ({max_per_user}) < min_per_user ({min_per_user})")
    cap = num_items - _SYNTH_MIN_NEGATIVES if num_items > 110 else num_items - 1
    hi = min(max_per_user, cap)
    if hi < min_per_user:
        raise ValueError(
            f"num_items={num_items} allows at most {cap} items per user, fewer than "
            f"min_per_user={min_per_user}"
        )
    rng = synthetic_rng(seed)
    user_f = rng.standard_normal((num_users, dim))
    item_f = rng.standard_normal((num_items, dim))
    # Random ranking so that an item's id says nothing about its popularity.
    log_pop = -popularity_exponent * np.log1p(rng.permutation(num_items))
    mu = 0.5 * (math.log(min_per_user) + math.log(hi))
    counts = np.exp(rng.normal(mu, _SYNTH_ACTIVITY_SIGMA, num_users))
    counts = np.clip(np.rint(counts), min_per_user, hi).astype(np.int64)

    scale = _SYNTH_AFFINITY_SCALE / math.sqrt(dim)
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
