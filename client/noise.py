"""The device's share of the user-level noise, added inside SecAgg+'s integer domain.

Under ``dp-noise-source = "devices"`` (docs/design.md §4) each device turns its clipped update
(l2 norm <= S) into integers of SecAgg+'s quantizer itself: scale by T / (2c), conditional
randomized rounding to l2 <= Δ2, plus Skellam noise Sk(mu) from its own secret randomness, plus
T / 2, clamped into [0, T] (clamping is the mechanism's failure event, planned below 1e-15 per run,
and counted). It then sends the float that Flower's quantizer maps back to exactly that integer
(:func:`shared.secagg.encode_exactly`), so the masks are added to the noised integers and the
server only ever unmasks the noised sum. Everything but mu the device derives itself: the scale
from SecAgg+'s own setup (c and T), Δ2 from S and the update's size.

Pure NumPy, no Flower: :func:`client.mods.user_clipping_mod` calls it after clipping.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared import skellam
from shared.secagg import encode_exactly


def noised_for_secagg(
    clipped: Sequence[np.ndarray],
    clip_norm: float,
    clipping_range: float,
    quantization_range: int,
    mu: float,
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], int]:
    """(the floats to hand SecAgg+, coordinates clamped) for an update clipped to ``clip_norm``."""
    t = int(quantization_range)
    scale = t / (2 * clipping_range)
    flat = np.concatenate([np.asarray(u, dtype=np.float64).ravel() for u in clipped]) * scale
    bound = skellam.rounded_l2(clip_norm * scale, flat.size)
    k = skellam.conditional_round(flat, bound, rng) + skellam.sample(rng, mu, flat.size) + t // 2
    clamped = int(np.count_nonzero(k < 0) + np.count_nonzero(k > t))
    x = encode_exactly(np.clip(k, 0, t), clipping_range, t)
    out, start = [], 0
    for part in clipped:
        size = np.asarray(part).size
        out.append(x[start : start + size].reshape(np.shape(part)))
        start += size
    return out, clamped
