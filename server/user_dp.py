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

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from shared import adaptive_clip, skellam
from shared.config import ConfigError, RunConfig
from shared.privacy import PrivacyHistory, clip_update, noise_for_target
from shared.secagg import DeviceNoisePlan, SecAggPlan, mu_of_multiplier, plan_device_noise
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
        for name, value in _adaptive_fields(config, cohort).items():
            setattr(self, name, value)
        try:
            adaptive_clip.update_noise_multiplier(self.noise_multiplier, self.clip_count_stddev)
        except ValueError as err:
            raise _count_noise_error(err, cohort) from None

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
        _move_clip(self, fraction)
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


def _adaptive_fields(config: RunConfig, cohort: float) -> dict[str, Any]:
    """Adaptive clipping's parameters for a mechanism, from the config and the expected cohort."""
    return {
        "adaptive": True,
        "clip_quantile": config.dp_user_clip_quantile,
        "clip_learning_rate": config.dp_user_clip_learning_rate,
        "clip_count_stddev": config.dp_user_clip_count_stddev
        or adaptive_clip.default_count_stddev(cohort),
        "clip_norm_max": config.user_clip_ceiling,
    }


def _count_noise_error(err: ValueError, cohort: float) -> ConfigError:
    return ConfigError(
        f"{err} (the expected cohort is {cohort:g} devices: with few devices per round the "
        "default cannot pay for the count; raise clients-per-round or set "
        "dp-user-clip-count-stddev)"
    )


def _move_clip(dp: UserLevelDP | DeviceNoiseDP, fraction: float) -> None:
    """S <- S exp(-eta (fraction - gamma)), kept within [ceiling x CLIP_FLOOR, ceiling]."""
    moved = adaptive_clip.next_clip_norm(
        dp.clip_norm, fraction, dp.clip_quantile, dp.clip_learning_rate
    )
    dp.clip_norm = min(max(moved, dp.clip_norm_max * CLIP_FLOOR), dp.clip_norm_max)
    dp.clip_fraction_under = fraction


def _with_bit_share(
    mu_for: Callable[[float], float],
    ceiling: float,
    dimension: int,
    count_stddev: float,
    cohort: float,
) -> Callable[[float], float]:
    """Device noise with adaptive clipping: the total mu at the ceiling that leaves room for the
    clip bit. ``mu_for`` gives the mu of a joint multiplier z (integer domain: z = sqrt(mu) /
    Δ2); the update then needs z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2), as with server noise."""

    def with_bit(scale: float) -> float:
        l2 = skellam.rounded_l2(ceiling * scale, dimension)
        z = math.sqrt(mu_for(scale)) / l2
        try:
            z_update = adaptive_clip.update_noise_multiplier(z, count_stddev)
        except ValueError as err:
            raise _count_noise_error(err, cohort) from None
        return (z_update * l2) ** 2

    return with_bit


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


@dataclass(frozen=True)
class RoundTerms:
    """One round of device noise: what each device adds and the sensitivities it is accounted
    with (integer units). ``bit_units`` B: a device's clip bit travels as (b - 1/2) B (0 without
    adaptive clipping)."""

    mu_device: float
    l1: float
    l2: float
    bit_units: int = 0
    update_l2: float = 0.0  # the update's own rounded Δ2 (l2 without the bit: l2 when fixed)


@dataclass
class DeviceNoiseDP:
    """User-level DP with the noise added by the devices inside SecAgg+ (Skellam mechanism).

    The server samples (Poisson, as :class:`UserLevelDP`), adds nothing, and accounts the noise
    actually present: each device adds Sk(mu_device) (``plan.mu_device``), so a sum of s survivors
    holds Sk(mu_device * s). A round is accounted when sampled with the fewest survivors SecAgg+
    allows (``plan.min_survivors``: conservative, and what stays if the round halts), then
    :meth:`settle` re-accounts it with the survivors the protocol reports, so a round with fewer
    survivors shows a larger ε, never a hidden one.

    With adaptive clipping the plan is derived for the ceiling S may reach, and every round's
    terms follow this round's S (:meth:`round_terms`): the noise shrinks with the rounded
    sensitivity, so each round costs what the plan's round at the ceiling costs, and the clip bit
    is one more coordinate of the same noised vector (docs/design.md §4).
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
    adaptive: bool = False
    clip_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clip_count_stddev: float = 0.0  # sigma_b: the count's noise std (count units) at min_survivors
    clip_norm_max: float = 0.0
    clip_fraction_under: float | None = None  # the last released noised fraction under S
    sampled_clip: float = 0.0  # the S of the round last sampled (0: none yet)

    @classmethod
    def from_config(
        cls, config: RunConfig, population: int, dimension: int, secagg: SecAggPlan
    ) -> DeviceNoiseDP:
        """The mechanism for this run; with a target ε, mu is calibrated at ``min_survivors``.

        With adaptive clipping the plan holds the ceiling (``secagg.bound``), and its mu also
        carries the clip bit's share: the update's part of the noise is then z_Delta, and z,
        which the two compose to, is what the target asks (:func:`_with_bit_share`).
        """
        q = sample_rate(config.clients_per_round, config.fraction_fit, population)
        rounds = config.num_server_rounds
        extra: dict[str, Any] = {}
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
                    secagg.bound,
                )

        if config.dp_user_adaptive_clip:
            extra = _adaptive_fields(config, q * population)
            base = mu_for or mu_of_multiplier(config.dp_user_noise_multiplier, secagg.bound)
            mu_for = _with_bit_share(
                base, secagg.bound, dimension, extra["clip_count_stddev"], q * population
            )
        plan = plan_device_noise(
            secagg,
            dimension,
            config.dp_user_noise_multiplier,
            config.noise_min_survivors,
            rounds,
            mu_for,
            rounding_at=config.dp_user_clip_norm,
        )
        mechanism = cls(plan=plan, **_mechanism_fields(config), **extra)
        if mechanism.adaptive:
            mechanism._check_bit_range()
        return mechanism

    def _check_bit_range(self) -> None:
        """The bit's |(b - 1/2) B| must fit the room the plan keeps for a coordinate (<= Δ2)."""
        terms = self.round_terms(self.clip_norm_max)
        if terms.bit_units / 2 > math.ceil(self.plan.l2):
            sigma = self.clip_count_stddev
            raise ConfigError(
                f"dp-user-clip-count-stddev {sigma:g} is so small that the clip bit would need "
                f"{terms.bit_units / 2:g} integer units, more than the update's sensitivity "
                f"{self.plan.l2:.6g} that SecAgg+'s range is planned for: raise it (the paper "
                "uses the expected cohort / 20)"
            )

    def round_terms(self, clip: float | None = None) -> RoundTerms:
        """This round's device mu and sensitivities at S = ``clip`` (default: the current S).

        Fixed clip: the plan's. Adaptive: the update's rounded Δ2 at S, mu scaled with Δ2² (so
        Δ2² / mu stays the plan's), and B the largest even integer with sqrt(mu) / B >= sigma_b
        at the fewest survivors, so the count's noise is at least sigma_b; the joint Δ2 of
        (update, bit) is sqrt(Δ2² + (B / 2)²) and Δ1 grows by B / 2.
        """
        plan = self.plan
        if not self.adaptive:
            return RoundTerms(plan.mu_device, plan.l1, plan.l2, update_l2=plan.l2)
        s = self.clip_norm if clip is None else clip
        l2_update = skellam.rounded_l2(s * plan.scale, plan.dimension)
        mu_total = plan.mu_target * (l2_update / plan.l2) ** 2
        bit = adaptive_clip.bit_units(mu_total, self.clip_count_stddev)
        return RoundTerms(
            mu_device=mu_total / plan.min_survivors,
            l1=skellam.rounded_l1(l2_update, plan.dimension) + bit / 2,
            l2=math.hypot(l2_update, bit / 2),
            bit_units=bit,
            update_l2=l2_update,
        )

    @property
    def noise_multiplier(self) -> float:
        """The Gaussian-equivalent z of this round at the fewest survivors: sqrt(mu_target) /
        (scale S) for a fixed clip; with the adaptive clip, that of the joint (update, bit)
        vector, sqrt(mu) / Δ2."""
        if not self.adaptive:
            return math.sqrt(self.plan.mu_target) / (self.plan.scale * self.round_clip())
        terms = self.round_terms(self.round_clip())
        return math.sqrt(terms.mu_device * self.plan.min_survivors) / terms.l2

    @property
    def update_noise_multiplier(self) -> float:
        """z_Delta, the update's share: sqrt(mu) over the update's own Δ2 (the adaptive clip)."""
        terms = self.round_terms(self.round_clip())
        return math.sqrt(terms.mu_device * self.plan.min_survivors) / terms.update_l2

    def round_clip(self) -> float:
        """The S of the round in progress (the one last sampled)."""
        return self.sampled_clip or self.clip_norm

    def adapt(self, noised_centred_bits: float, population: int) -> float:
        """Release the fraction under S from the count the devices noised, and move S.

        The server adds nothing: the unmasked count already holds the survivors' Skellam noise.
        """
        cohort = self.sample_rate(population) * population
        fraction = adaptive_clip.noised_clipped_fraction(noised_centred_bits, 0.0, cohort)
        _move_clip(self, fraction)
        return fraction

    def sample_rate(self, population: int) -> float:
        return sample_rate(self.clients_per_round, self.sample_fraction, population)

    def _round(
        self, q: float, survivors: int, clip: float | None = None
    ) -> tuple[float, float, float, float]:
        terms = self.round_terms(clip)
        return (terms.mu_device * survivors, q, terms.l1, terms.l2)

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
        self.sampled_clip = self.clip_norm
        self.history = self.history.add(*self._round(q, self.plan.min_survivors))
        return chosen

    def settle(self, survivors: int, population: int) -> None:
        """Re-account this round with the noise present: ``survivors`` devices' shares.

        A sum of fewer survivors than planned (which the plan refuses at setup) is accounted as
        it is: its ε is larger, and shown.
        """
        q = self.sample_rate(population)
        terms = self._round(q, survivors, self.round_clip())
        self.history = self.history.replace_last_round(*terms)

    def mu_present(self, survivors: int) -> float:
        return self.round_terms(self.round_clip()).mu_device * survivors

    def noise_stddev(self, population: int, survivors: int) -> float:
        """Std of the noise on the released average: sqrt(mu present) / scale / (q N)."""
        std = math.sqrt(self.mu_present(survivors)) / self.plan.scale
        return std / (self.sample_rate(population) * population)

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

    def clip_bit_coordinate(self, contributors: int) -> tuple[float, float] | None:
        """Adaptive clipping under device noise: (float units of one centred bit in the unmasked
        sum, the std of the noise on the cohort's count) this round. None: the bit travels as
        (b - 1/2) x SecAgg+'s bound, with no noise on it before the server adds its own."""
        dp = self.mechanism
        if not isinstance(dp, DeviceNoiseDP) or not dp.adaptive:
            return None
        terms = dp.round_terms(dp.round_clip())
        count_std = math.sqrt(terms.mu_device * contributors) / terms.bit_units
        return terms.bit_units / dp.plan.scale, count_std

    def shard_noise_norm(self, users: int) -> float:
        """Device noise on shards: how far ``users`` users' shares can move a shard's sum's
        norm (0 for server noise, or before the plan exists)."""
        plan = self.noise_plan()
        return 0.0 if plan is None or users <= 0 else plan.sum_noise_norm(users)

    def noise_plan(self) -> DeviceNoisePlan | None:
        """The device-noise plan in force (None before the first round or for server noise)."""
        dp = self.mechanism
        return dp.plan if isinstance(dp, DeviceNoiseDP) else None
