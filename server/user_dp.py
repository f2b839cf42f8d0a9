"""User-level DP on the server: DP-FedAvg (McMahan et al. 2018), and its accountant.

Neighbouring datasets differ in one whole user. Per round:

1. every available client is sampled independently with probability q (Poisson sampling: what the
   RDP accountant assumes; Flower's own sampler draws a fixed count without replacement, for which
   the Poisson bound does not hold, so under user-level DP we sample ourselves);
2. each device clips its whole update to L2 norm S (``client.mods.user_clipping_mod``); the server
   clips again, which is a no-op for honest devices;
3. the server sums the clipped updates, adds N(0, (z S)^2) to every coordinate and divides by the
   fixed denominator q N (the expected cohort), so one user moves the result by at most S / (q N)
   and uniform weights keep that bound (example counts are ignored).

Fewer replies than sampled (dropouts, failures, rejected or budget-exhausted devices) do not change
the accounting: the sampling already happened and the denominator stays q N, so the noise still
covers any one user's contribution; the average is just smaller. Every sampled round is accounted,
also one that is then skipped (conservative).

Under SecAgg+ the server never sees a single update, so it cannot clip again: the devices' clip
(enforced by ``client.mods.user_clipping_mod`` before masking) is the only one, and the noise is
added to the unmasked sum (:meth:`UserLevelDP.aggregate_sum`). A SecAgg+ round that halts
released nothing computed from the updates (no noised sum exists), yet it is still accounted like
any other sampled round: ε stays an upper bound, and dropouts an adversary could provoke never
lower the reported ε.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from shared.config import RunConfig
from shared.privacy import PrivacyHistory, clip_update, noise_for_target
from shared.streams import Stream, generator, secret_seed


def noisy_average(
    updates: Sequence[Sequence[np.ndarray]],
    shapes: Sequence[tuple[int, ...]],
    clip_norm: float,
    noise_multiplier: float,
    denominator: float,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """(sum of clipped updates + N(0, (z S)^2)) / denominator, coordinate-wise."""
    total = [np.zeros(shape, dtype=np.float64) for shape in shapes]
    for update in updates:
        for acc, part in zip(total, clip_update(update, clip_norm)[0], strict=True):
            acc += part
    return noised_sum(total, clip_norm, noise_multiplier, denominator, rng)


def noised_sum(
    total: Sequence[np.ndarray],
    clip_norm: float,
    noise_multiplier: float,
    denominator: float,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """(sum of already clipped updates + N(0, (z S)^2)) / denominator, coordinate-wise."""
    std = noise_multiplier * clip_norm
    return [(acc + rng.normal(0.0, std, size=acc.shape)) / denominator for acc in total]


@dataclass
class UserLevelDP:
    """The server's user-level mechanism: sampling, noise and the run's accountant."""

    noise_multiplier: float
    clip_norm: float
    delta: float
    accountant: str
    epsilon_cap: float
    sample_fraction: float  # q, or None-like 0 meaning "use clients_per_round / N"
    clients_per_round: int
    seed: int | None  # None: sampling and noise from OS entropy (the default; see _rng)
    history: PrivacyHistory = field(default_factory=PrivacyHistory)

    @classmethod
    def from_config(cls, config: RunConfig, population: int | None = None) -> UserLevelDP:
        z = config.dp_user_noise_multiplier
        mechanism = cls(
            noise_multiplier=z,
            clip_norm=config.dp_user_clip_norm,
            delta=config.dp_user_delta,
            accountant=config.dp_accountant,
            epsilon_cap=config.dp_user_epsilon_cap,
            sample_fraction=config.fraction_fit,
            clients_per_round=config.clients_per_round,
            seed=config.seed if config.dp_reproducible_noise else None,
        )
        if config.dp_user_target_epsilon > 0:
            if population is None:
                raise ValueError("a user-level target epsilon needs the population size")
            mechanism.noise_multiplier = noise_for_target(
                config.dp_user_target_epsilon,
                config.dp_user_delta,
                mechanism.sample_rate(population),
                config.num_server_rounds,
                config.dp_accountant,
            )
        return mechanism

    def _rng(self, stream: Stream, server_round: int) -> np.random.Generator:
        # Who is sampled and the noise must be secret: an observer who could replay them from the
        # run's seed (it is in config.json) would strip the noise and lose no amplification.
        if self.seed is None:
            return np.random.default_rng(secret_seed(128))
        return generator(self.seed, stream, server_round)

    def sample_rate(self, population: int) -> float:
        if self.clients_per_round:
            return min(1.0, self.clients_per_round / population)
        return self.sample_fraction

    def epsilon(self) -> float:
        return self.history.epsilon(self.delta, self.accountant)

    def would_pass_cap(self, population: int) -> bool:
        """Whether one more round would take ε past the cap (then the run stops)."""
        if not self.epsilon_cap:
            return False
        after = self.history.add(self.noise_multiplier, self.sample_rate(population), 1)
        return after.epsilon(self.delta, self.accountant) > self.epsilon_cap

    def sample(self, node_ids: Sequence[int], server_round: int) -> list[int]:
        """Poisson sampling: each node independently with probability q; accounts the round."""
        q = self.sample_rate(len(node_ids))
        rng = self._rng(Stream.USER_DP_SAMPLING, server_round)
        ordered = sorted(node_ids)
        chosen = [node for node, u in zip(ordered, rng.random(len(ordered)), strict=True) if u < q]
        self.history = self.history.add(self.noise_multiplier, q, 1)
        return chosen

    def aggregate(
        self,
        updates: Sequence[Sequence[np.ndarray]],
        shapes: Sequence[tuple[int, ...]],
        population: int,
        server_round: int,
    ) -> list[np.ndarray]:
        """The noised, fixed-denominator average update of this round."""
        rng = self._rng(Stream.USER_DP_NOISE, server_round)
        denominator = self.sample_rate(population) * population
        return noisy_average(
            updates, shapes, self.clip_norm, self.noise_multiplier, denominator, rng
        )

    def aggregate_sum(
        self, total: Sequence[np.ndarray], population: int, server_round: int
    ) -> list[np.ndarray]:
        """The noised, fixed-denominator average from a sum of device-clipped updates (SecAgg+)."""
        rng = self._rng(Stream.USER_DP_NOISE, server_round)
        denominator = self.sample_rate(population) * population
        return noised_sum(total, self.clip_norm, self.noise_multiplier, denominator, rng)

    def noise_stddev(self, population: int) -> float:
        """Std of the noise on the average: z S / (q N)."""
        return self.noise_multiplier * self.clip_norm / (self.sample_rate(population) * population)


@dataclass
class UserDPState:
    """The run's user-level DP state, shared by the Poisson sampler and the noise step.

    Plain data, so a checkpoint can write it: the mechanism (with its accountant's history) once
    the population is known at the first round, the population, and why the run stopped, if it
    did.
    """

    mechanism: UserLevelDP | None = None
    population: int = 0
    stopped: str | None = None
