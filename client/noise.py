"""The device's share of the user-level noise, added inside SecAgg+'s integer domain.

Under ``dp-noise-source = "devices"`` (docs/design.md §4) each device turns its clipped update
(l2 norm <= S) into integers of SecAgg+'s quantizer itself: scale by T / (2c), conditional
randomized rounding to l2 <= Δ2, plus Skellam noise Sk(mu) from its own secret randomness, plus
T / 2, clamped into [0, T] (clamping is the mechanism's failure event, planned below 1e-15 per run,
and counted). It then sends the float that Flower's quantizer maps back to exactly that integer
(:func:`shared.secagg.encode_exactly`), so the masks are added to the noised integers and the
server only ever unmasks the noised sum. Everything but mu the device derives itself: the scale
from SecAgg+'s own setup (c and T), Δ2 from S and the update's size.

Pure NumPy, no Flower: :func:`client.mods.user_clipping_mod` calls it after clipping, and
:class:`SimulatedDevicesNoise` for a shard's users (and the item-inference audit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from shared import skellam
from shared.secagg import encode_exactly
from shared.streams import Stream, generator, secret_seed
from shared.wire import NOISE_MU, NOISE_RANGES

if TYPE_CHECKING:
    from client.policy import DevicePolicy
    from shared.config import RunConfig


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


def device_noise_rng(config: RunConfig, device: int, server_round: int) -> np.random.Generator:
    """The randomness of one device's noise share: fresh OS entropy (the guarantee rests on it,
    so it is never derivable from anything the server knows), or under dp-reproducible-noise
    (RESEARCH ONLY: a deployed device refuses it) the device's stream of the run seed."""
    if config.dp_reproducible_noise:
        return generator(config.seed, Stream.DEVICE_NOISE, device + 1, server_round)
    return np.random.default_rng(secret_seed(128))


class SimulatedDevicesNoise:
    """Device noise for many simulated devices in one process (a shard's users, the item-
    inference audit's): each adds its own Skellam share to its clipped update in SecAgg+'s
    integer domain exactly as its device would (:func:`noised_for_secagg`, from the stream its
    device would use: partition id = user id), so a sum of them is the noised sum SecAgg+ over
    those devices would unmask."""

    def __init__(self, config: RunConfig, mu: float, clipping_range: float, target: int) -> None:
        self.config, self.mu = config, mu
        self.clipping_range, self.target = clipping_range, target
        self.clamped = 0

    @classmethod
    def from_instructions(
        cls, config: RunConfig, instructions, policy: DevicePolicy
    ) -> SimulatedDevicesNoise | None:
        """A shard's round: mu and SecAgg+'s ranges from the server (no SecAgg+ setup delivers
        them); None when the devices add no noise in this run."""
        mu = instructions.get(NOISE_MU)
        policy.check_device_noise(config, mu)  # as a device: no "no noise" when devices add it
        if not config.device_noise:
            return None
        ranges = instructions.get(NOISE_RANGES)
        if not isinstance(ranges, bytes) or len(ranges) != 16:
            raise ValueError(
                f"a device-noise round on shards must name SecAgg+'s ranges ({NOISE_RANGES}: "
                "[c, T] as float64 bytes): the shard cannot place its users' integers"
            )
        c, t = np.frombuffer(ranges, dtype=np.float64).tolist()
        return cls(config, float(mu), c, int(t))

    def noised(self, update, clip: float, device: int, server_round: int) -> list[np.ndarray]:
        rng = device_noise_rng(self.config, device, server_round)
        out, clamped = noised_for_secagg(
            update, clip, self.clipping_range, self.target, self.mu, rng
        )
        self.clamped += clamped
        return out
