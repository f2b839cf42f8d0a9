"""SUM-phase steps: the round's replies become one sum of updates (and the training loss)."""

from __future__ import annotations

from logging import WARNING

import numpy as np
from flwr.common import log

from server.optimizers import ModelState
from server.pipeline import Phase, Step
from server.round import Reply, RoundState, RoundSum, SkipRound, mean_loss
from server.secagg import clipped_fraction, unmasked_mean
from server.validation import InvalidReply
from shared.records import SecureAggregation
from shared.secagg import SecAggPlan
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
            w = 1 if self.uniform else reply.num_examples
            for acc, part in zip(total, reply.update, strict=True):
                acc += np.multiply(part, w, dtype=np.float64)
            weight += w
        return RoundSum(total=total, weight=weight, trained=len(trained))


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

    def __init__(self, plan: SecAggPlan, model: ModelState) -> None:
        self.plan = plan
        self.model = model

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
        try:
            mean = unmasked_mean(results, self.model.shapes, self.plan)
            rnd.note(secagg_clipped_fraction=clipped_fraction(results, self.model.size))
        except InvalidReply as err:
            raise SkipRound(f"SecAgg+ aggregate rejected: {err}") from None
        if rnd.record.secagg_clipped_fraction:
            log(WARNING, "round %d: the SecAgg+ quantizer clipped coordinates", rnd.number)
        if not trained:
            raise SkipRound("no device trained")
        if (loss := mean_loss(trained)) is not None:
            rnd.note(train_loss=loss)
        total = [m * contributors for m in mean]
        return RoundSum(total=total, weight=float(len(trained)), trained=len(trained))

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
