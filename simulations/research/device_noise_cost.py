"""What device-added noise costs against server noise at one target ε, side by side.

For a population like ML-100K's (943 users, a 59,000-coordinate global model, S = 1), prints the
Gaussian noise multiplier the server would add (Opacus' tight subsampled-Gaussian RDP) and the
equivalent one of the devices' Skellam noise at the fewest survivors (shared/skellam.py: the
general Poisson-subsampling bound of Zhu & Wang 2019), their ratio, the derived SecAgg+ range and
the time one device takes to noise its update.
Run: ``python -m simulations.research.device_noise_cost``.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np

from client.noise import noised_for_secagg
from shared import skellam
from shared.privacy import clip_update, noise_for_target
from shared.secagg import plan_device_noise, plan_secagg

CASES = ((0.1, 50, 8.0), (0.1, 50, 4.0), (0.05, 100, 8.0), (1.0, 20, 8.0))  # (q, rounds, ε)


def main(dimension: int = 59_000, clip: float = 1.0, delta: float = 1e-5) -> None:
    warnings.simplefilter("ignore")  # Opacus' order-range warnings at q = 1
    base = plan_secagg(clip, 1000, 7, 4, 60.0)
    plan = None
    for q, rounds, target in CASES:
        z_server = noise_for_target(target, delta, q, rounds, "rdp")

        def mu_for(scale: float, q=q, rounds=rounds, target=target) -> float:
            return skellam.mu_for_target(target, delta, q, rounds, scale, dimension, clip)

        plan = plan_device_noise(base, dimension, 0.0, 4, rounds, mu_for)
        z_devices = math.sqrt(plan.mu_target) / (plan.scale * clip)
        print(
            f"q {q:<5} rounds {rounds:<4} ε {target:<4}: z server {z_server:.4f}  z devices "
            f"{z_devices:.4f}  ratio {z_devices / z_server:.3f}  c {plan.secagg.clipping_range:g}"
            f"  clamp bound {plan.clamp_probability(rounds):.1e}"
        )
    rng = np.random.default_rng(0)
    update = clip_update([rng.normal(size=dimension)], clip)[0]
    started = time.perf_counter()
    for _ in range(20):
        secagg = plan.secagg
        noised_for_secagg(
            update, clip, secagg.clipping_range, secagg.quantization_range, plan.mu_device, rng
        )
    took = (time.perf_counter() - started) / 20
    print(f"one device noises a {dimension}-coordinate update in {took * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
