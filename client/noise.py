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

import math
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
    centred_bit: float | None = None,
    bit_units: int = 0,
) -> tuple[list[np.ndarray], int]:
    """(the floats to hand SecAgg+, coordinates clamped) for an update clipped to ``clip_norm``.

    Adaptive clipping: ``centred_bit`` (b - 1/2, or 0 for a device at its budget) becomes one
    more coordinate, the exact integer (b - 1/2) x ``bit_units``, noised with the rest and
    appended as a (1,) array. The device refuses a B that is not an even integer >= 2, or whose
    half exceeds the update's own rounded sensitivity: the server could otherwise make the bit
    stand out of the noise (a semi-honest server never asks for that; the plan refuses it).
    """
    t = int(quantization_range)
    scale = t / (2 * clipping_range)
    flat = np.concatenate([np.asarray(u, dtype=np.float64).ravel() for u in clipped]) * scale
    bound = skellam.rounded_l2(clip_norm * scale, flat.size)
    k = skellam.conditional_round(flat, bound, rng)
    shapes = [np.shape(part) for part in clipped]
    if centred_bit is not None:
        check_bit_units(bit_units, bound)
        k = np.append(k, np.int64(round(centred_bit * bit_units)))
        shapes.append((1,))
    k = k + skellam.sample(rng, mu, k.size) + t // 2
    clamped = int(np.count_nonzero(k < 0) + np.count_nonzero(k > t))
    x = encode_exactly(np.clip(k, 0, t), clipping_range, t)
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(x[start : start + size].reshape(shape))
        start += size
    return out, clamped


def check_bit_units(bit_units: object, update_l2: float) -> None:
    """Refuse a clip-bit scale B that is not an even integer in [2, 2 x the update's Δ2]."""
    ok = isinstance(bit_units, int) and not isinstance(bit_units, bool)
    if ok and bit_units >= 2 and bit_units % 2 == 0 and bit_units / 2 <= math.ceil(update_l2):
        return
    raise ValueError(
        f"the round asks this device to scale its clip bit by {bit_units!r} integer units: it "
        f"must be an even integer in [2, {2 * math.ceil(update_l2)}] (twice the update's rounded "
        "sensitivity), or the bit would not be hidden by the noise. The device drops out"
    )
