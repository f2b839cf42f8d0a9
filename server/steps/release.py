"""RELEASE-phase steps: the round's sum becomes its released average update.

This is the one place that decides who adds the noise: nobody (:class:`MeanOfTrained`), the
server (:class:`UserLevelNoise`, DP-FedAvg), or, later, the devices under SecAgg+ (a step that
adds nothing and records the noise the survivors added).
"""

from __future__ import annotations

from server.pipeline import Phase, Step
from server.round import Aggregate, RoundState, RoundSum
from server.user_dp import UserDPState
from shared.config import RunConfig
from shared.records import UserLevel
from shared.wire import CLIP_NORM


class MeanOfTrained(Step):
    """No noise: the sum divided by the weight of the devices that trained."""

    phase = Phase.RELEASE

    def release(self, rnd: RoundState, total: RoundSum) -> Aggregate:
        return Aggregate(update=[t / total.weight for t in total.total], cohort=total.trained)


class UserLevelNoise(Step):
    """DP-FedAvg: N(0, (z S)^2) on the clipped sum, divided by the fixed denominator q N.

    The sampling and the accountant live in :class:`server.user_dp.UserDPState`, shared with the
    Poisson sampler; this step adds the noise, tells the devices S, and writes the user-level
    ledger unit.
    """

    phase = Phase.RELEASE
    # The noise is calibrated to updates of norm <= S: someone must have clipped them.
    needs_one_of = ("ServerClip", "SecAggSum")

    def __init__(self, config: RunConfig, state: UserDPState) -> None:
        self.config = config
        self.state = state

    def instructions(self, rnd: RoundState) -> dict:
        return {CLIP_NORM: self.config.dp_user_clip_norm}

    def release(self, rnd: RoundState, total: RoundSum) -> Aggregate:
        dp, population = self.state.mechanism, self.state.population
        update = dp.aggregate_sum(total.total, population, rnd.number)
        return Aggregate(update=update, cohort=dp.sample_rate(population) * population)

    def ledger_units(self, rnd: RoundState) -> dict[str, UserLevel]:
        dp, population, record = self.state.mechanism, self.state.population, rnd.record
        if dp is None:
            return {"user_level": UserLevel(enabled=True)}
        return {
            "user_level": UserLevel(
                enabled=True,
                accountant=self.config.dp_accountant,
                noise_multiplier=dp.noise_multiplier,
                clip_norm=dp.clip_norm,
                sample_rate=dp.sample_rate(population),
                population=population,
                expected_cohort=dp.sample_rate(population) * population,
                sampled=record.fit_sampled or 0,
                replied=(record.fit_replies or 0) - (record.budget_exhausted or 0),
                noise_stddev=dp.noise_stddev(population),
                sampling="poisson",
                delta=dp.delta,
                epsilon_cap=self.config.dp_user_epsilon_cap or None,
                epsilon=dp.epsilon(),
                rounds_accounted=dp.history.steps,
                status=rnd.status(),
            )
        }
