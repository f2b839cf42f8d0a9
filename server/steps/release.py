"""RELEASE-phase steps: the round's sum becomes its released average update.

This is the one place that decides who adds the noise: nobody (:class:`MeanOfTrained`), the
server (:class:`UserLevelNoise`, DP-FedAvg; :class:`PooledNoise`, one DP-SGD step over the
cohort's pooled interactions), or the devices under SecAgg+ (:class:`DeviceNoise`, which adds
nothing and records the noise the survivors added).
"""

from __future__ import annotations

import math

import numpy as np

from server.pipeline import Phase, Step
from server.round import Aggregate, RoundState, RoundSum, SkipRound
from server.user_dp import DeviceNoiseDP, UserDPState, UserLevelDP, mechanism_rng
from shared.config import RunConfig
from shared.pooled import plan_pooled
from shared.records import UserLevel
from shared.streams import Stream
from shared.wire import CLIP_BIT, CLIP_BIT_UNITS, CLIP_NORM, NOISE_MU, NOISE_RANGES


class MeanOfTrained(Step):
    """No noise: the sum divided by the weight of the devices that trained."""

    phase = Phase.RELEASE

    def release(self, rnd: RoundState, total: RoundSum) -> Aggregate:
        return Aggregate(update=[t / total.weight for t in total.total], cohort=total.trained)


class PooledNoise(Step):
    """Pooled interaction-level DP (:mod:`shared.pooled`): N(0, (σC)²) once on the cohort's sum.

    Every device that trained sent minus the sum of its clipped per-interaction gradients (its
    update); this adds the noise of one DP-SGD step to their sum and divides by the number of
    devices that trained, a count no interaction can change (in this mode a device declines by
    its accountant alone, which its data does not move). The server optimizer then steps on it.
    The noise is secret (OS entropy) unless ``dp-reproducible-noise``. Against the server it
    protects nothing: the server sees each device's sum (or, under SecAgg+, the cohort's exact
    sum) before adding it, and the devices' ε assumes it adds what the plan says.
    """

    phase = Phase.RELEASE
    needs_one_of = ("ReplyValidation", "ShardValidation", "SecAggSum")

    def __init__(self, config: RunConfig) -> None:
        self.plan = plan_pooled(config)
        self.seed = config.seed if config.dp_reproducible_noise else None

    def release(self, rnd: RoundState, total: RoundSum) -> Aggregate:
        rng = mechanism_rng(self.seed, Stream.POOLED_NOISE, rnd.number)
        std = self.plan.noise_stddev
        noised = [(t + rng.normal(0.0, std, size=t.shape)) / total.weight for t in total.total]
        return Aggregate(update=noised, cohort=total.trained)


class UserLevelNoise(Step):
    """DP-FedAvg: N(0, (z S)^2) on the clipped sum, divided by the fixed denominator q N.

    The sampling and the accountant live in :class:`server.user_dp.UserDPState`, shared with the
    Poisson sampler; this step adds the noise, tells the devices S, and writes the user-level
    ledger unit.

    With adaptive clipping (``dp-user-adaptive-clip``) it also asks every device for its clip
    bit, adds N(0, sigma_b^2) to the cohort's sum of centred bits (summed inside SecAgg+ when it
    runs, so no single bit is seen), releases the noised fraction and moves S for the next round
    (:meth:`server.user_dp.UserLevelDP.adapt`); the update noise is z_Delta S, and z, which the
    two compose to, is what the accountant adds.
    """

    phase = Phase.RELEASE
    # The noise is calibrated to updates of norm <= S: someone must have clipped them.
    needs_one_of = ("ServerClip", "SecAggSum", "ShardValidation")

    def __init__(self, config: RunConfig, state: UserDPState) -> None:
        self.config = config
        self.state = state
        self._released: tuple[int, float] | None = None  # (round, the S it was clipped to)

    def instructions(self, rnd: RoundState) -> dict:
        out: dict = {CLIP_NORM: self.state.clip_norm(self.config)}
        if self.config.dp_user_adaptive_clip:
            out[CLIP_BIT] = 1
        return out

    def release(self, rnd: RoundState, total: RoundSum) -> Aggregate:
        dp, population = self.state.mechanism, self.state.population
        update = dp.aggregate_sum(total.total, population, rnd.number)
        self._released = (rnd.number, dp.clip_norm)
        if dp.adaptive:
            if total.centred_bits is None:
                raise RuntimeError("adaptive clipping needs the round's clip bits in its sum")
            fraction = dp.adapt(total.centred_bits, population, rnd.number)
            rnd.note(clip_norm=self._released[1], clip_fraction_under=round(fraction, 6))
        return Aggregate(update=update, cohort=dp.sample_rate(population) * population)

    def ledger_units(self, rnd: RoundState) -> dict[str, UserLevel]:
        dp, population, record = self.state.mechanism, self.state.population, rnd.record
        if dp is None:
            return {"user_level": UserLevel(enabled=True)}
        released = self._released is not None and self._released[0] == rnd.number
        clip = self._released[1] if released else dp.clip_norm  # the S of this round
        return {
            "user_level": UserLevel(
                enabled=True,
                accountant=self.config.dp_accountant,
                noise_multiplier=dp.noise_multiplier,
                clip_norm=clip,
                sample_rate=dp.sample_rate(population),
                population=population,
                expected_cohort=dp.sample_rate(population) * population,
                sampled=record.fit_sampled or 0,
                replied=(record.fit_replies or 0) - (record.budget_exhausted or 0),
                noise_stddev=dp.noise_stddev(population, clip),
                sampling="poisson",
                delta=dp.delta,
                epsilon_cap=self.config.dp_user_epsilon_cap or None,
                epsilon=dp.epsilon(),
                rounds_accounted=dp.history.steps,
                status=rnd.status(),
                # noise_source absent: the server (the ledger's rows stay as they were)
                **(_adaptive_fields(dp, released) if dp.adaptive else {}),
            )
        }


def _adaptive_fields(dp: UserLevelDP | DeviceNoiseDP, released: bool) -> dict:
    """The adaptive clip's ledger fields, for either noise source: its parameters, and what this
    round released."""
    return {
        "clip_adaptive": True,
        "update_noise_multiplier": dp.update_noise_multiplier,
        "clip_count_stddev": dp.clip_count_stddev,
        "clip_quantile": dp.clip_quantile,
        "clip_fraction_under": dp.clip_fraction_under if released else None,
        "next_clip_norm": dp.clip_norm,
    }


class DeviceNoise(Step):
    """Device-added noise (Skellam, inside SecAgg+): the server adds NOTHING and divides by q N.

    It tells the devices S and the Skellam variance each adds (``plan.mu_device``), and records
    the noise the sum actually holds: the survivors SecAgg+ reports times mu_device. The round
    was accounted at the fewest survivors when sampled; here it is re-accounted with the
    survivors, once, whether it then aggregates or is skipped after the unmask (the server saw
    that sum either way). A halted round keeps the conservative entry.

    With adaptive clipping it tells the devices this round's S, the mu for that S and the bit's
    scale B (:meth:`server.user_dp.DeviceNoiseDP.round_terms`), releases the fraction within S
    from the count the devices already noised (adding nothing) and moves S.
    """

    phase = Phase.RELEASE
    # the noise is added in SecAgg+'s integer domain: by devices under SecAgg+, or on shards by
    # each simulated user (the shard's sum is what SecAgg+ over its users would unmask)
    needs_one_of = ("SecAggSum", "ShardValidation")

    def __init__(self, config: RunConfig, state: UserDPState) -> None:
        self.config = config
        self.state = state
        self._settled: int | None = None  # the last round re-accounted with its survivors
        self.shards = config.cohort_size > 1
        self._shard_survivors: tuple[int, int] | None = None  # (round, users in its sum)

    def _mechanism(self) -> DeviceNoiseDP:
        dp = self.state.mechanism
        if not isinstance(dp, DeviceNoiseDP):
            raise RuntimeError("DeviceNoise needs the device-noise mechanism (dp-noise-source)")
        return dp

    def instructions(self, rnd: RoundState) -> dict:
        dp = self._mechanism()
        terms = dp.round_terms()
        out: dict = {CLIP_NORM: dp.clip_norm, NOISE_MU: terms.mu_device}
        if dp.adaptive:  # the bit rides in the noised vector, scaled by this round's B
            out |= {CLIP_BIT: 1, CLIP_BIT_UNITS: terms.bit_units}
        if self.shards:  # no SecAgg+ setup delivers the integer domain: the server names it
            secagg = dp.plan.secagg
            ranges = [secagg.clipping_range, float(secagg.quantization_range)]
            out[NOISE_RANGES] = np.asarray(ranges, dtype=np.float64).tobytes()
        return out

    def _settle(self, rnd: RoundState, survivors: int | None = None) -> None:
        """Re-account the round with its survivors: SecAgg+'s count, or on shards the users
        whose shares are in the sum (given by :meth:`release`)."""
        if survivors is None and not self.shards:
            survivors = rnd.record.secagg_survivors
        if survivors is None or self._settled == rnd.number or rnd.record.stopped is not None:
            return
        self._mechanism().settle(survivors, self.state.population)
        self._settled = rnd.number

    def release(self, rnd: RoundState, total: RoundSum) -> Aggregate:
        dp, population = self._mechanism(), self.state.population
        if self.shards:
            # SecAgg+'s guard would halt a round of fewer survivors before the unmask; so does
            # this, and the round keeps its conservative entry (at the fewest survivors)
            if total.trained < dp.plan.min_survivors:
                raise SkipRound(
                    f"{total.trained} users' noise shares in the sum, fewer than "
                    f"dp-noise-min-survivors {dp.plan.min_survivors}"
                )
            self._shard_survivors = (rnd.number, total.trained)
        self._settle(rnd, total.trained if self.shards else None)
        denominator = dp.sample_rate(population) * population
        if dp.adaptive:  # the count arrives noised by the survivors: the server adds nothing
            if total.centred_bits is None:
                raise RuntimeError("adaptive clipping needs the round's clip bits in its sum")
            clip = dp.round_clip()
            fraction = dp.adapt(total.centred_bits, population)
            rnd.note(clip_norm=clip, clip_fraction_under=round(fraction, 6))
        return Aggregate(update=[t / denominator for t in total.total], cohort=denominator)

    def ledger_units(self, rnd: RoundState) -> dict[str, UserLevel]:
        dp, population, record = self.state.mechanism, self.state.population, rnd.record
        if not isinstance(dp, DeviceNoiseDP):
            return {"user_level": UserLevel(enabled=True, noise_source="devices")}
        self._settle(rnd)
        plan = dp.plan
        survivors = record.secagg_survivors
        if self.shards:
            last = self._shard_survivors
            survivors = last[1] if last is not None and last[0] == rnd.number else None
        counted = plan.min_survivors if survivors is None else survivors  # as accounted
        epsilon = dp.epsilon()
        clamp = plan.clamp_probability(dp.history.steps)
        q = dp.sample_rate(population)
        clip = dp.round_clip()
        terms = dp.round_terms(clip)
        return {
            "user_level": UserLevel(
                enabled=True,
                accountant="skellam-rdp",
                noise_multiplier=dp.noise_multiplier,
                clip_norm=clip,
                sample_rate=q,
                population=population,
                expected_cohort=q * population,
                sampled=record.fit_sampled or 0,
                replied=(record.fit_replies or 0) - (record.budget_exhausted or 0),
                noise_stddev=dp.noise_stddev(population, counted),
                sampling="poisson",
                delta=dp.delta,
                epsilon_cap=self.config.dp_user_epsilon_cap or None,
                epsilon=epsilon,
                rounds_accounted=dp.history.steps,
                status=rnd.status(),
                noise_source="devices",
                mu_device=terms.mu_device,
                min_survivors=plan.min_survivors,
                survivors=survivors,
                mu_present=dp.mu_present(counted),
                scale=plan.scale,
                l2_sensitivity=terms.l2,
                l1_sensitivity=terms.l1,
                noise_clamped=record.noise_clamped,
                clamp_probability=clamp,
                clamp_delta=_clamp_delta(epsilon, clamp),
                **(
                    _adaptive_fields(dp, record.clip_fraction_under is not None)
                    if dp.adaptive
                    else {}
                ),
            )
        }


def _clamp_delta(epsilon: float, clamp: float) -> float:
    """(1 + e^ε) p: what a failure event of probability p adds to δ (total variation argument)."""
    try:
        return (1 + math.exp(epsilon)) * clamp
    except OverflowError:
        return math.inf
