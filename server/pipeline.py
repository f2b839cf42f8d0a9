"""The round pipeline: an ordered list of small steps, checked once at setup, run every round.

A round goes through five phases, always in this order:

1. ``REPLIES``  each device's reply is checked, observed or transformed (validation, clipping);
2. ``SUM``      the replies become one sum of updates (plaintext, or SecAgg+'s unmasked sum);
3. ``RELEASE``  the sum becomes the round's released average update; whoever adds noise does it
   here (server-side user-level noise today; device-added noise under SecAgg+ would be another
   RELEASE step that adds nothing and records what the survivors added);
4. ``OPTIMIZE`` the server optimizer steps the global model (the only copy of it);
5. ``RECORD``   what the round wrote: the metrics row, then the privacy ledger entry.

Exactly one step fills each of SUM, RELEASE and OPTIMIZE. A step may add to the round's
instructions (config sent to the devices), refuse the round (:class:`SkipRound`) and contribute a
unit to the ledger. :class:`Pipeline` refuses at setup any list whose order breaks the phases or a
step's own ``must_follow`` (noise added before clipping would void the DP guarantee silently).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import IntEnum
from typing import Any, ClassVar

from server.round import Aggregate, Reply, RoundState, RoundSum
from shared.records import InteractionLevel, SecureAggregation, UserLevel

Unit = InteractionLevel | UserLevel | SecureAggregation


class Phase(IntEnum):
    REPLIES = 1
    SUM = 2
    RELEASE = 3
    OPTIMIZE = 4
    RECORD = 5


WHY = {
    Phase.REPLIES: "every reply is checked and clipped before anything is computed from it",
    Phase.SUM: "the sum is taken over checked, clipped replies",
    Phase.RELEASE: "noise is calibrated to the clipped sum and must be added before the model "
    "moves",
    Phase.OPTIMIZE: "the server optimizer may only see the released (noised) update",
    Phase.RECORD: "a round is recorded once everything in it has happened",
}


HOOKS = {
    Phase.REPLIES: "on_replies",
    Phase.SUM: "combine",
    Phase.RELEASE: "release",
    Phase.OPTIMIZE: "apply",
    Phase.RECORD: "finish",
}


class PipelineError(ValueError):
    """A step list that cannot run as given; the message names the steps and the fix."""


class Step:
    """One server mechanism. Override only the hooks of your phase (and any of the shared ones)."""

    phase: ClassVar[Phase]
    must_follow: ClassVar[tuple[str, ...]] = ()  # step names that, when present, come first
    needs_one_of: ClassVar[tuple[str, ...]] = ()  # at least one of these must come earlier

    @property
    def name(self) -> str:
        return type(self).__name__

    # shared hooks
    def instructions(self, rnd: RoundState) -> dict[str, Any]:
        """Config keys this step adds to the round's fit instructions."""
        return {}

    def on_sampled(self, rnd: RoundState, cohort: Sequence[Any]) -> None:
        """Called once the cohort is drawn; may skip the round (``rnd.note(skipped=...)``)."""

    def ledger_units(self, rnd: RoundState) -> Mapping[str, Unit]:
        """Ledger units (``interaction_level``, ...) this step is the source of."""
        return {}

    # phase hooks
    def on_replies(self, rnd: RoundState, replies: list[Reply]) -> list[Reply]:
        raise NotImplementedError  # REPLIES

    def combine(self, rnd: RoundState, replies: list[Reply]) -> RoundSum:
        raise NotImplementedError  # SUM

    def release(self, rnd: RoundState, total: RoundSum) -> Aggregate:
        raise NotImplementedError  # RELEASE

    def apply(self, rnd: RoundState, aggregate: Aggregate) -> None:
        raise NotImplementedError  # OPTIMIZE

    def finish(self, rnd: RoundState, units: Mapping[str, Unit]) -> None:
        raise NotImplementedError  # RECORD


class Pipeline:
    """The ordered steps of every round; the order is checked here, once."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = tuple(steps)
        check_order(self.steps)
        self.summer = self._only(Phase.SUM)
        self.releaser = self._only(Phase.RELEASE)
        self.optimizer = self._only(Phase.OPTIMIZE)

    def _only(self, phase: Phase) -> Step:
        return next(s for s in self.steps if s.phase is phase)

    def of(self, phase: Phase) -> list[Step]:
        return [s for s in self.steps if s.phase is phase]

    def find(self, kind: type) -> Any:
        """The step of this class, or None (for orchestration hooks such as SecAgg+ stages)."""
        return next((s for s in self.steps if isinstance(s, kind)), None)

    def instructions(self, rnd: RoundState) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for step in self.steps:
            out.update(step.instructions(rnd))
        return out

    def on_sampled(self, rnd: RoundState, cohort: Sequence[Any]) -> None:
        for step in self.steps:
            if not rnd.closed:
                step.on_sampled(rnd, cohort)

    def fit(self, rnd: RoundState, replies: list[Reply]) -> None:
        """Replies -> sum -> released update -> model step; raises SkipRound to leave the model."""
        for step in self.of(Phase.REPLIES):
            replies = step.on_replies(rnd, replies)
        total = self.summer.combine(rnd, replies)
        self.optimizer.apply(rnd, self.releaser.release(rnd, total))

    def finish(self, rnd: RoundState) -> None:
        units: dict[str, Unit] = {}
        for step in self.steps:
            units.update(step.ledger_units(rnd))
        for step in self.of(Phase.RECORD):
            step.finish(rnd, units)


def check_order(steps: Sequence[Step]) -> None:
    """Refuse an order that breaks the phases or a step's ``must_follow``, naming the fix."""
    for phase in (Phase.SUM, Phase.RELEASE, Phase.OPTIMIZE):
        found = [s.name for s in steps if s.phase is phase]
        if len(found) != 1:
            raise PipelineError(
                f"the round needs exactly one {phase.name} step, got {found or 'none'}: "
                f"{WHY[phase]}"
            )
    for step in steps:
        hook = HOOKS[step.phase]
        if getattr(type(step), hook) is getattr(Step, hook):
            raise PipelineError(f"{step.name} is a {step.phase.name} step but has no {hook}()")
    for i, later in enumerate(steps):
        for earlier in steps[i + 1 :]:
            if earlier.phase < later.phase:
                raise PipelineError(
                    f"{later.name} ({later.phase.name} phase) is listed before {earlier.name} "
                    f"({earlier.phase.name} phase), but {WHY[earlier.phase]}: move "
                    f"{later.name} after {earlier.name}"
                )
            if earlier.name in later.must_follow:
                raise PipelineError(
                    f"{later.name} is listed before {earlier.name}, but it must follow it: "
                    f"move {later.name} after {earlier.name}"
                )
    for i, step in enumerate(steps):
        earlier_names = {s.name for s in steps[:i]}
        if step.needs_one_of and not earlier_names & set(step.needs_one_of):
            raise PipelineError(
                f"{step.name} needs one of {', '.join(step.needs_one_of)} before it: "
                f"{WHY[Phase.REPLIES]}; add one before {step.name}"
            )
