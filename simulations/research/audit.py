"""``confide audit item-inference``: run the honest-but-curious server's attack on real updates.

The updates are produced in-process by the devices' own training code
(``client.training_round.train``, seeded per device and round, exactly as in a simulation), one
local round per user from one global model: the final model of a finished run (RUN_DIR), or
the initial model of a config.
What the server sees is then reproduced without running the protocol: without SecAgg+ each
device's (clipped) update, with SecAgg+ the sum over a cohort, which is what SecAgg+ outputs (the
end-to-end tests check it equals the plain sum to 1e-4). The attack itself is in
:mod:`server.audit`. A device starts from a fresh private embedding here (seeded as in round 1),
not from the one it trained during the run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from client import training_round
from server.audit import audit, table
from shared.config import RunConfig
from shared.models import global_arrays, global_names
from shared.privacy import clip_update
from shared.split import split_for
from shared.streams import Stream, generator

AUDIT_FILE = "audit.json"


class DevicesNoise:
    """Device-added noise (``dp-noise-source = "devices"``): each user's clipped update gets its
    own Skellam share in SecAgg+'s integers, as its device would add it
    (:class:`client.noise.SimulatedDevicesNoise`), with the run's plan (calibrated to its target
    ε at its min-survivors); a cohort's sum then holds every member's share, what SecAgg+ would
    unmask."""

    def __init__(self, config: RunConfig, plan, server_round: int) -> None:
        from client.noise import SimulatedDevicesNoise

        self.config, self.plan, self.server_round = config, plan, server_round
        secagg = plan.secagg
        self.devices = SimulatedDevicesNoise(
            config, plan.mu_device, secagg.clipping_range, secagg.quantization_range
        )

    @classmethod
    def of(
        cls, config: RunConfig, population: int, model: list[np.ndarray], server_round: int
    ) -> DevicesNoise | None:
        if not config.device_noise:
            return None
        from server.user_dp import DeviceNoiseDP  # the server's own plan, as the run derived it

        dimension = sum(np.asarray(a).size for a in model)
        secagg = config.noise_quantizer_plan()
        return cls(config, DeviceNoiseDP.from_config(config, population, dimension, secagg).plan,
                   server_round)  # fmt: skip

    def noised(self, update: list[np.ndarray], user: int) -> list[np.ndarray]:
        return self.devices.noised(update, self.config.dp_user_clip_norm, user, self.server_round)

    def summary(self) -> dict:
        return {
            "mu_device": self.plan.mu_device,
            "min_survivors": self.plan.min_survivors,
            "float_stddev_per_device": self.plan.float_stddev(1),
        }


def _model(config: RunConfig):
    return config.build_model(split_for(config).num_items)


def run_item_inference(
    config: RunConfig,
    model: list[np.ndarray] | None,
    out_dir: Path,
    cohorts: list[int],
    max_users: int = 0,
) -> list[dict]:
    torch.set_num_threads(1)
    started = time.monotonic()
    split = split_for(config)
    fresh = _model(config)
    names = global_names(fresh)
    server_round = 1 if model is None else config.num_server_rounds + 1
    model = global_arrays(fresh) if model is None else model
    item_tables = [i for i, name in enumerate(names) if name.startswith("item_")]
    # The device's own clip, if any: the user-level S, or the SecAgg+ bound.
    bound = (
        config.dp_user_clip_norm
        if config.dp_user
        else (config.secagg_update_bound if config.secagg else None)
    )
    rng = generator(config.seed, Stream.AUDIT_USERS)
    users = rng.permutation(split.num_users)[: max_users or None].tolist()  # cohort order
    truth = {u: split.user_data(u).train_items for u in users}
    popularity = np.bincount(
        np.concatenate([split.user_data(u).train_items for u in range(split.num_users)]),
        minlength=split.num_items,
    ).astype(np.float64)

    noise = DevicesNoise.of(config, split.num_users, model, server_round)

    def updates() -> Iterator[tuple[int, list[np.ndarray]]]:
        for user in users:
            result = training_round.train(
                config, split.user_data(user), user, server_round, model, None
            )
            update = [
                n.astype(np.float64) - o for n, o in zip(result.global_arrays, model, strict=True)
            ]
            update = update if bound is None else clip_update(update, bound)[0]
            yield user, (update if noise is None else noise.noised(update, user))

    rows = audit(
        updates(), truth, item_tables, popularity, cohorts, seed=config.seed, noised=bool(noise)
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "attack": "score items by the change of their embedding rows (server.audit), guess "
        "the top n, n = the user's number of training items; precision@n per user",
        "model": "initial" if server_round == 1 else f"final model after {server_round - 1} rounds",
        "dataset": config.dataset,
        "num_items": split.num_items,
        "users": len(users),
        "device_clip": bound,
        "device_noise": noise.summary() if noise else None,
        "rows": rows,
        "seconds": round(time.monotonic() - started, 1),
    }
    (out_dir / AUDIT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))
    print(f"[confide] audit of {len(users)} users written to {out_dir / AUDIT_FILE}")
    return rows
