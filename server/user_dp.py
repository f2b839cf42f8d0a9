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

With ``dp-noise-source = "devices"`` (:class:`DeviceNoiseDP`) the server adds nothing: each device
adds its share of Skellam noise before SecAgg+ masks its update (:mod:`client.noise`), and the
accountant (:mod:`shared.skellam`) composes the noise the survivors actually added, round by round
(docs/design.md §4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from shared import adaptive_clip, skellam
from shared.config import ConfigError, RunConfig
from shared.privacy import PrivacyHistory, clip_update, noise_for_target
from shared.secagg import DeviceNoisePlan, SecAggPlan, plan_device_noise
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
    # Adaptive clipping (shared/adaptive_clip.py): clip_norm is then this round's S, moved after
    # every released round; the accountant keeps z, the update noise uses the larger z_Delta.
    adaptive: bool = False
    clip_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clip_count_stddev: float = 0.0  # sigma_b on the count of centred bits
    clip_norm_max: float = 0.0
    clip_fraction_under: float | None = None  # the last released noised fraction under S

    @classmethod
    def from_config(cls, config: RunConfig, population: int | None = None) -> UserLevelDP:
        mechanism = cls(
            noise_multiplier=config.dp_user_noise_multiplier,
            accountant=config.dp_accountant,
            **_mechanism_fields(config),
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
        if config.dp_user_adaptive_clip:
            if population is None:
                raise ValueError("adaptive clipping needs the population size (its cohort)")
            mechanism._adapt_from(config, population)
        return mechanism

    def _adapt_from(self, config: RunConfig, population: int) -> None:
        """Adaptive clipping's parameters; refuses a count noise the budget cannot pay for."""
        cohort = self.sample_rate(population) * population
        self.adaptive = True
        self.clip_quantile = config.dp_user_clip_quantile
        self.clip_learning_rate = config.dp_user_clip_learning_rate
        self.clip_count_stddev = config.dp_user_clip_count_stddev or (
            adaptive_clip.default_count_stddev(cohort)
        )
        self.clip_norm_max = config.user_clip_ceiling
        try:
            adaptive_clip.update_noise_multiplier(self.noise_multiplier, self.clip_count_stddev)
        except ValueError as err:
            raise ConfigError(
                f"{err} (the expected cohort is {cohort:g} devices: with few devices per round "
                "the default cannot pay for the count; raise clients-per-round or set "
                "dp-user-clip-count-stddev)"
            ) from None

    @property
    def update_noise_multiplier(self) -> float:
        """z_Delta, the multiplier of the noise on the update sum: z itself with a fixed clip;
        with adaptive clipping the larger value that leaves room for the count's noise."""
        if not self.adaptive:
            return self.noise_multiplier
        return adaptive_clip.update_noise_multiplier(self.noise_multiplier, self.clip_count_stddev)

    def adapt(self, centred_bits: float, population: int, server_round: int) -> float:
        """Release the noised fraction of devices under S and move S for the next round.

        ``centred_bits`` is the exact sum of (bit - 1/2) over the devices in this round's sum
        (under SecAgg+ the server sees only that sum); N(0, sigma_b^2) is added here, once, and
        only the noised fraction is kept. S stays within [max / 1e4, max]: the ceiling is what
        SecAgg+'s quantizer was derived for. Returns the released fraction.
        """
        rng = self._rng(Stream.CLIP_COUNT_NOISE, server_round)
        noise = float(rng.normal(0.0, self.clip_count_stddev))
        cohort = self.sample_rate(population) * population
        fraction = adaptive_clip.noised_clipped_fraction(centred_bits, noise, cohort)
        moved = adaptive_clip.next_clip_norm(
            self.clip_norm, fraction, self.clip_quantile, self.clip_learning_rate
        )
        self.clip_norm = min(max(moved, self.clip_norm_max * CLIP_FLOOR), self.clip_norm_max)
        self.clip_fraction_under = fraction
        return fraction

    def _rng(self, stream: Stream, server_round: int) -> np.random.Generator:
        return mechanism_rng(self.seed, stream, server_round)

    def sample_rate(self, population: int) -> float:
        return sample_rate(self.clients_per_round, self.sample_fraction, population)

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
        chosen = poisson_draw(node_ids, q, self._rng(Stream.USER_DP_SAMPLING, server_round))
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
            updates, shapes, self.clip_norm, self.update_noise_multiplier, denominator, rng
        )

    def aggregate_sum(
        self, total: Sequence[np.ndarray], population: int, server_round: int
    ) -> list[np.ndarray]:
        """The noised, fixed-denominator average from a sum of device-clipped updates (SecAgg+)."""
        rng = self._rng(Stream.USER_DP_NOISE, server_round)
        denominator = self.sample_rate(population) * population
        return noised_sum(total, self.clip_norm, self.update_noise_multiplier, denominator, rng)

    def noise_stddev(self, population: int, clip_norm: float | None = None) -> float:
        """Std of the noise on the average: z_Delta S / (q N) (S: this round's, by default)."""
        clip = self.clip_norm if clip_norm is None else clip_norm
        return self.update_noise_multiplier * clip / (self.sample_rate(population) * population)


# Adaptive clipping never takes S below this fraction of its ceiling: SecAgg+'s quantization step
# is fixed by the ceiling, and a far smaller S would be lost in it.
CLIP_FLOOR = 1e-4


def _mechanism_fields(config: RunConfig) -> dict[str, Any]:
    """What every user-level mechanism takes from the config: S, δ, the cap, the sampling rule
    and the seed (None: its randomness comes from OS entropy)."""
    return {
        "clip_norm": config.dp_user_clip_norm,
        "delta": config.dp_user_delta,
        "epsilon_cap": config.dp_user_epsilon_cap,
        "sample_fraction": config.fraction_fit,
        "clients_per_round": config.clients_per_round,
        "seed": config.seed if config.dp_reproducible_noise else None,
    }


def mechanism_rng(seed: int | None, stream: Stream, server_round: int) -> np.random.Generator:
    """The randomness of user-level sampling (and server noise): OS entropy unless seeded.

    Who is sampled and the noise must be secret: an observer who could replay them from the
    run's seed (it is in config.json) would strip the noise and lose no amplification.
    """
    if seed is None:
        return np.random.default_rng(secret_seed(128))
    return generator(seed, stream, server_round)


def sample_rate(clients_per_round: int, fraction: float, population: int) -> float:
    """q: a fixed ``clients-per-round`` over the population, else ``fraction-fit``."""
    if clients_per_round:
        return min(1.0, clients_per_round / population)
    return fraction


def poisson_draw(node_ids: Sequence[int], q: float, rng: np.random.Generator) -> list[int]:
    """Poisson sampling: each node independently with probability q (sorted: seeded runs repeat)."""
    ordered = sorted(node_ids)
    return [node for node, u in zip(ordered, rng.random(len(ordered)), strict=True) if u < q]


@dataclass
class DeviceNoiseDP:
    """User-level DP with the noise added by the devices inside SecAgg+ (Skellam mechanism).

    The server samples (Poisson, as :class:`UserLevelDP`), adds nothing, and accounts the noise
    actually present: each device adds Sk(mu_device) (``plan.mu_device``), so a sum of s survivors
    holds Sk(mu_device * s). A round is accounted when sampled with the fewest survivors SecAgg+
    allows (``plan.min_survivors``: conservative, and what stays if the round halts), then
    :meth:`settle` re-accounts it with the survivors the protocol reports, so a round with fewer
    survivors shows a larger ε, never a hidden one.
    """

    plan: DeviceNoisePlan
    clip_norm: float
    delta: float
    epsilon_cap: float
    sample_fraction: float
    clients_per_round: int
    seed: int | None
    history: skellam.SkellamHistory = field(default_factory=skellam.SkellamHistory)
    accountant: str = "rdp"  # Skellam RDP (shared.skellam), converted as Opacus' RDP does

    @classmethod
    def from_config(
        cls, config: RunConfig, population: int, dimension: int, secagg: SecAggPlan
    ) -> DeviceNoiseDP:
        """The mechanism for this run; with a target ε, mu is calibrated at ``min_survivors``."""
        q = sample_rate(config.clients_per_round, config.fraction_fit, population)
        rounds = config.num_server_rounds
        mu_for = None
        if config.dp_user_target_epsilon > 0:

            def mu_for(scale: float) -> float:
                return skellam.mu_for_target(
                    config.dp_user_target_epsilon,
                    config.dp_user_delta,
                    q,
                    rounds,
                    scale,
                    dimension,
                    config.dp_user_clip_norm,
                )

        plan = plan_device_noise(
            secagg,
            dimension,
            config.dp_user_noise_multiplier,
            config.noise_min_survivors,
            rounds,
            mu_for,
        )
        return cls(plan=plan, **_mechanism_fields(config))

    def sample_rate(self, population: int) -> float:
        return sample_rate(self.clients_per_round, self.sample_fraction, population)

    def _round(self, q: float, survivors: int) -> tuple[float, float, float, float]:
        return (self.plan.mu_device * survivors, q, self.plan.l1, self.plan.l2)

    def epsilon(self) -> float:
        return self.history.epsilon(self.delta)

    def would_pass_cap(self, population: int) -> bool:
        """Whether one more round at the fewest survivors would take ε past the cap."""
        if not self.epsilon_cap:
            return False
        q = self.sample_rate(population)
        after = self.history.add(*self._round(q, self.plan.min_survivors))
        return after.epsilon(self.delta) > self.epsilon_cap

    def sample(self, node_ids: Sequence[int], server_round: int) -> list[int]:
        """Poisson sampling; accounts the round at the fewest survivors (see :meth:`settle`)."""
        q = self.sample_rate(len(node_ids))
        rng = mechanism_rng(self.seed, Stream.USER_DP_SAMPLING, server_round)
        chosen = poisson_draw(node_ids, q, rng)
        self.history = self.history.add(*self._round(q, self.plan.min_survivors))
        return chosen

    def settle(self, survivors: int, population: int) -> None:
        """Re-account this round with the noise present: ``survivors`` devices' shares.

        A sum of fewer survivors than planned (which the plan refuses at setup) is accounted as
        it is: its ε is larger, and shown.
        """
        q = self.sample_rate(population)
        self.history = self.history.replace_last_round(*self._round(q, survivors))

    def mu_present(self, survivors: int) -> float:
        return self.plan.mu_device * survivors

    def noise_stddev(self, population: int, survivors: int) -> float:
        """Std of the noise on the released average: sqrt(mu present) / scale / (q N)."""
        return self.plan.float_stddev(survivors) / (self.sample_rate(population) * population)

    def to_meta(self) -> dict[str, Any]:
        """Plain data for a checkpoint (the history is saved as an array beside it)."""
        return {k: v for k, v in asdict(self).items() if k != "history"}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], history: skellam.SkellamHistory) -> DeviceNoiseDP:
        plan = dict(meta["plan"])
        plan["secagg"] = SecAggPlan(**plan["secagg"])
        fields_ = {k: v for k, v in meta.items() if k != "plan"}
        return cls(plan=DeviceNoisePlan(**plan), **fields_, history=history)


@dataclass
class UserDPState:
    """The run's user-level DP state, shared by the Poisson sampler and the noise step.

    Plain data, so a checkpoint can write it: the mechanism (with its accountant's history) once
    the population is known at the first round, the population, and why the run stopped, if it
    did.
    """

    mechanism: UserLevelDP | DeviceNoiseDP | None = None
    population: int = 0
    stopped: str | None = None
    # Device noise only: what the mechanism is derived from when the population is first known.
    dimension: int = 0
    secagg: SecAggPlan | None = None

    def create(self, config: RunConfig) -> UserLevelDP | DeviceNoiseDP:
        """The run's mechanism, once the population is known (the first round)."""
        if config.device_noise:
            if self.secagg is None or not self.dimension:
                raise ValueError("device noise needs the SecAgg+ plan and the model's dimension")
            return DeviceNoiseDP.from_config(config, self.population, self.dimension, self.secagg)
        return UserLevelDP.from_config(config, self.population)

    def clip_norm(self, config: RunConfig) -> float:
        """The S devices are told this round: the mechanism's (it moves under adaptive
        clipping), or the configured one before the first round."""
        dp = self.mechanism
        return config.dp_user_clip_norm if dp is None else dp.clip_norm

    def noise_plan(self) -> DeviceNoisePlan | None:
        """The device-noise plan in force (None before the first round or for server noise)."""
        dp = self.mechanism
        return dp.plan if isinstance(dp, DeviceNoiseDP) else None
