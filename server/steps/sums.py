"""SUM-phase steps: the round's replies become one sum of updates (and the training loss)."""

from __future__ import annotations

from collections.abc import Callable
from logging import WARNING

import numpy as np
from flwr.common import log

from server.optimizers import ModelState
from server.pipeline import Phase, Step
from server.round import Reply, RoundState, RoundSum, SkipRound, mean_loss
from server.secagg import clipped_fraction, noise_clamped, unmasked_mean
from server.validation import InvalidReply
from shared.records import SecureAggregation
from shared.secagg import NOISE_NORM_SIGMAS, DeviceNoisePlan, SecAggPlan
from shared.wire import SECAGG_BOUND

# The derived protocol parameters a reviewer sees in the ledger (shared.secagg.SecAggPlan's names).
PLAN_IN_LEDGER = (
    *("bound", "num_shares", "reconstruction_threshold", "clipping_range"),
    *("quantization_range", "modulus_range", "max_cohort"),
)


class PlaintextSum(Step):
    """The sum of the validated updates of the devices that trained.

    Weighted by example counts for FedAvg and FedAdam (Flower's rule); uniform for item-sum and
    under user-level DP, where a device's weight must not depend on its data.
    """

    phase = Phase.SUM

    def __init__(self, model: ModelState, *, uniform: bool) -> None:
        self.model = model
        self.uniform = uniform

    def combine(self, rnd: RoundState, replies: list[Reply]) -> RoundSum:
        trained = [r for r in replies if r.trained]
        if not trained:
            raise SkipRound("no valid trained replies")
        if (loss := mean_loss(trained)) is not None:
            rnd.note(train_loss=loss)
        total = [np.zeros(shape, dtype=np.float64) for shape in self.model.shapes]
        weight = 0.0
        for reply in trained:
            if reply.weight is not None:  # a shard: its users' weighted sum, already weighed
                w, part_weight = 1.0, reply.weight
            else:
                w = part_weight = 1 if self.uniform else reply.num_examples
            for acc, part in zip(total, reply.update, strict=True):
                acc += np.multiply(part, w, dtype=np.float64)
            weight += part_weight
        users = sum(r.users for r in trained)
        bits = None  # adaptive clipping: ClipCounts checked every trained reply's count
        if trained and all(r.clip_under is not None for r in trained):
            bits = sum(r.clip_under - r.users / 2 for r in trained)
        return RoundSum(total=total, weight=weight, trained=users, centred_bits=bits)


class SecAggSum(Step):
    """SecAgg+: every result carries the same unmasked mean of the devices' clipped updates.

    Nothing per device can be validated (the server never sees an update); the aggregate is
    checked instead: uniform weights, the model's layout, finite, within the bound every device
    clips to, and the quantizer's clipped fraction as the devices report it. A device at its DP
    budget sent a zero update that is in the sum, so the sum is over every device whose masked
    update arrived and the denominator is the devices that trained (the same rule as without
    SecAgg+).
    """

    phase = Phase.SUM

    def __init__(
        self,
        plan: SecAggPlan,
        model: ModelState,
        noise: Callable[[], DeviceNoisePlan | None] | None = None,
        clip_bits: bool = False,
        bit_coordinate: Callable[[int], tuple[float, float] | None] | None = None,
    ) -> None:
        self.base_plan = plan
        self.model = model
        # Device noise: the plan in force (derived when the population is known, round 1).
        self.noise = noise or (lambda: None)
        # Adaptive clipping: each device appends its centred clip bit x B as one more masked
        # coordinate (client/mods.py), so the server unmasks only the cohort's count.
        self.clip_bits = clip_bits
        # Under device noise the bit is scaled by the round's B and noised by the devices:
        # (float units of one centred bit, the count's noise std) for n contributors.
        self.bit_coordinate = bit_coordinate or (lambda contributors: None)

    @property
    def plan(self) -> SecAggPlan:
        """The protocol's parameters: with device noise, c is the noise plan's power of two."""
        noise = self.noise()
        return self.base_plan if noise is None else noise.secagg

    def _noise_norm(self, survivors: int) -> float:
        """How far device noise (and the devices' rounding) can move the mean's norm."""
        noise = self.noise()
        if noise is None or survivors <= 0:
            return 0.0
        return noise.sum_noise_norm(survivors) / survivors

    def instructions(self, rnd: RoundState) -> dict:
        return {SECAGG_BOUND: self.plan.bound}

    def on_sampled(self, rnd: RoundState, cohort) -> None:
        if len(cohort) > self.plan.max_cohort:  # Poisson sampling drew too many
            rnd.note(
                skipped=f"{len(cohort)} devices sampled, more than secagg-max-cohort "
                f"{self.plan.max_cohort} that the SecAgg+ modulus allows"
            )
            log(WARNING, "round %d skipped: %s", rnd.number, rnd.record.skipped)

    def stage(self, rnd: RoundState, stage: str, active: int, halt: str | None) -> None:
        """After each SecAgg+ stage (see GuardedSecAggPlusWorkflow); a halt leaves the model."""
        if rnd.closed:
            return  # already explained (nothing sampled, too many sampled, run stopped)
        rnd.note(
            secagg_active={**(rnd.record.secagg_active or {}), stage: active},
            fit_failures=(rnd.record.fit_sampled or 0) - active,
        )
        if halt is not None:
            rnd.note(skipped=f"{halt}: global model unchanged")
            log(WARNING, "round %s: %s", rnd.number, rnd.record.skipped)

    def combine(self, rnd: RoundState, replies: list[Reply]) -> RoundSum:
        contributors = len(replies)
        trained = [r for r in replies if r.trained]
        rnd.note(
            fit_replies=contributors,
            fit_rejected=0,
            secagg_survivors=contributors,
            secagg_dropped=(rnd.record.fit_sampled or 0) - contributors,
        )
        results = [(None, r.res) for r in replies]
        shapes = [*self.model.shapes, *([(1,)] if self.clip_bits else [])]
        try:
            noise = self._noise_norm(contributors)
            mean = unmasked_mean(
                results, shapes, self.plan, noise_norm=noise, update_arrays=len(self.model.shapes)
            )
            bits = self._centred_bits(mean, contributors)
            size = self.model.size + (1 if self.clip_bits else 0)
            rnd.note(secagg_clipped_fraction=clipped_fraction(results, size))
            if self.noise() is not None:
                rnd.note(noise_clamped=noise_clamped(results))
        except InvalidReply as err:
            raise SkipRound(f"SecAgg+ aggregate rejected: {err}") from None
        if rnd.record.secagg_clipped_fraction:
            log(WARNING, "round %d: the SecAgg+ quantizer clipped coordinates", rnd.number)
        if rnd.record.noise_clamped:
            log(WARNING, "round %d: devices clamped noised coordinates", rnd.number)
        if not trained:
            raise SkipRound("no device trained")
        if (loss := mean_loss(trained)) is not None:
            rnd.note(train_loss=loss)
        total = [m * contributors for m in mean]
        return RoundSum(
            total=total, weight=float(len(trained)), trained=len(trained), centred_bits=bits
        )

    def _centred_bits(self, mean: list[np.ndarray], contributors: int) -> float | None:
        """Adaptive clipping: pops the bit coordinate off ``mean`` and returns the cohort's sum
        of (bit - 1/2), checked: each device's coordinate is within +-B / 2."""
        if not self.clip_bits:
            return None
        unit, noise_std = self.bit_coordinate(contributors) or (self.plan.bound, 0.0)
        centred = float(mean.pop()[0]) * contributors / unit
        limit = contributors / 2 + NOISE_NORM_SIGMAS * noise_std
        if abs(centred) > limit * (1 + 1e-6) + 1e-6:
            noised = f" plus {NOISE_NORM_SIGMAS:g} noise stds" if noise_std else ""
            raise InvalidReply(
                f"the unmasked sum of clip bits is {centred:.4g}, outside +-{contributors / 2:g}"
                f"{noised} for {contributors} devices: a device sent something other than its bit"
            )
        return centred

    def ledger_units(self, rnd: RoundState) -> dict[str, SecureAggregation]:
        return {
            "secure_aggregation": SecureAggregation(
                enabled=True,
                **{name: getattr(self.plan, name) for name in PLAN_IN_LEDGER},
                survivors=rnd.record.secagg_survivors or 0,
                clipped_fraction=rnd.record.secagg_clipped_fraction,
                status=rnd.status(),
            )
        }
