"""SecAgg+ on the server: Flower's workflow with derived parameters and loud halts.

Flower's ``SecAggPlusWorkflow`` ends a round that lost too many devices by logging "Secure
aggregation halted." and returning: the strategy is never called, the model stays as it was and
the run still exits 0 (docs/design.md §8). Here each stage is wrapped (not copied) so that a halt is
reported to the strategy with the stage and the survivor count, and recorded as a skipped round.

Under SecAgg+ the strategy's ``aggregate_fit`` receives one result per device whose masked update
is in the sum, each carrying the SAME unmasked aggregate (the mean of the devices' clipped
updates, see :mod:`client.mods`) and the device's plaintext metrics; :func:`unmasked_mean` checks
that aggregate before it may touch the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from flwr.common import FitRes, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.workflow import SecAggPlusWorkflow

from server.validation import InvalidReply
from shared.secagg import SecAggPlan
from shared.wire import NOISE_CLAMPED, SECAGG_CLIPPED

# The mean of updates of norm <= B has norm <= B; quantization adds far less than this slack.
NORM_SLACK = 1e-3


class GuardedSecAggPlusWorkflow(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow that reports every stage: ``on_stage(stage, active, halt)``.

    ``active`` is the number of devices that answered the stage; ``halt`` is None, or the reason
    the round halted there.

    ``min_survivors`` (device noise: ``dp-noise-min-survivors``) halts a round whose masked
    updates came from fewer devices, after the collect stage and before anything is unmasked: the
    sum of fewer devices' noise shares would hold less noise than the plan, and halting there
    means no sum exists. Flower's own threshold guarantees survivors only up to
    ``secagg-reconstruction-threshold``; this guard is what lets the devices plan for more.
    """

    def __init__(
        self,
        plan: SecAggPlan | Callable[[], SecAggPlan],
        on_stage: Callable[[str, int, str | None], None],
        min_survivors: int = 0,
    ) -> None:
        # A callable plan is read at every setup stage, after the strategy sampled the round:
        # under device noise the clipping range is derived once the population is known.
        self._plan = plan if callable(plan) else (lambda: plan)
        super().__init__(**self._plan().workflow_kwargs())
        self.on_stage = on_stage
        self.min_survivors = min_survivors

    @property
    def clipping_range(self) -> float:
        """Read by Flower's setup stage after ``configure_fit``: the plan in force."""
        return self._plan().clipping_range

    @clipping_range.setter
    def clipping_range(self, value: float) -> None:  # Flower's __init__ assigns it
        if value != self._plan().clipping_range:
            raise ValueError("the SecAgg+ clipping range comes from the plan only")

    def _checked(self, stage: str, ok: bool, state, why: str | None = None) -> bool:
        sampled, active = len(state.sampled_node_ids), len(state.active_node_ids)
        halt = why
        if not ok and halt is None:
            halt = (
                f"secure aggregation halted at the {stage} stage: {active} of {sampled} sampled "
                f"devices still active, and each device needs {state.threshold} active among "
                f"its {state.num_shares} neighbours (secagg-reconstruction-threshold)"
                if sampled
                else "secure aggregation halted at the setup stage: fewer than 2 devices sampled"
            )
        self.on_stage(stage, active, halt)
        return ok and why is None

    def setup_stage(self, grid, context, state) -> bool:
        return self._checked("setup", super().setup_stage(grid, context, state), state)

    def share_keys_stage(self, grid, context, state) -> bool:
        return self._checked("share-keys", super().share_keys_stage(grid, context, state), state)

    def collect_masked_vectors_stage(self, grid, context, state) -> bool:
        ok = super().collect_masked_vectors_stage(grid, context, state)
        active, why = len(state.active_node_ids), None
        if ok and active < self.min_survivors:
            why = (
                f"secure aggregation halted at the collect stage: {active} devices' masked "
                f"updates arrived, fewer than dp-noise-min-survivors {self.min_survivors} whose "
                "noise shares the sum must hold, so nothing was unmasked"
            )
        return self._checked("collect", ok, state, why)

    def unmask_stage(self, grid, context, state) -> bool:
        return self._checked("unmask", super().unmask_stage(grid, context, state), state)


def unmasked_mean(
    results: Sequence[tuple[ClientProxy, FitRes]],
    shapes: Sequence[tuple[int, ...]],
    plan: SecAggPlan,
    noise_norm: float = 0.0,
    update_arrays: int | None = None,
) -> list[np.ndarray]:
    """The round's unmasked mean update, checked; raises :class:`InvalidReply` if unusable.

    ``noise_norm``: how much device-added noise may add to the mean's norm (0: none added).
    ``update_arrays``: how many leading arrays are the update the bound applies to (the rest,
    adaptive clipping's bit coordinate, the caller checks); None: all of them.
    """
    weights = sorted({res.num_examples for _, res in results})
    if weights != [1]:
        raise InvalidReply(
            f"devices sent weights {weights} under SecAgg+ (every device must send 1): the "
            "aggregate is not the uniform mean"
        )
    mean = parameters_to_ndarrays(results[0][1].parameters)
    if [a.shape for a in mean] != [tuple(s) for s in shapes]:
        raise InvalidReply("the unmasked aggregate does not have the model's layout")
    if not all(np.isfinite(a).all() for a in mean):
        raise InvalidReply("the unmasked aggregate contains NaN or Inf")
    update = mean if update_arrays is None else mean[:update_arrays]
    norm = float(np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in update)))
    if norm > plan.bound * (1 + NORM_SLACK) + noise_norm:
        raise InvalidReply(
            f"the unmasked mean update has L2 norm {norm:.4g} > the bound {plan.bound:g} that "
            f"every device clips to (plus {noise_norm:.4g} for device noise): a device did not "
            "clip, or the sum wrapped around"
        )
    return [a.astype(np.float64) for a in mean]


def noise_clamped(results: Sequence[tuple[ClientProxy, FitRes]]) -> int:
    """Coordinates the devices clamped into SecAgg+'s range after noising, as they report it."""
    counts = [res.metrics.get(NOISE_CLAMPED) for _, res in results]
    if any(not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in counts):
        raise InvalidReply(f"devices must report {NOISE_CLAMPED} as a count, got {counts}")
    return int(sum(counts))


def clipped_fraction(results: Sequence[tuple[ClientProxy, FitRes]], num_coordinates: int) -> float:
    """Fraction of the round's masked coordinates the quantizer clipped, as devices report it."""
    counts = [res.metrics.get(SECAGG_CLIPPED) for _, res in results]
    if any(not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in counts):
        raise InvalidReply(f"devices must report {SECAGG_CLIPPED} as a count, got {counts}")
    return sum(counts) / (len(results) * num_coordinates)
