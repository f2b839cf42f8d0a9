"""Pooled interaction-level DP: the plan both sides derive from the run config alone.

In this mode (``dp-interaction-mode = "pooled"``, docs/design.md §4) a round is one DP-SGD step
over the pooled batch of the whole cohort: every device Poisson-samples its interactions at the
run's rate q, sends the sum of their clipped gradients at the global model, and the noise
N(0, (σC)²) is added once, to the cohort's sum. For every device that trained, a round is
therefore one step of the sampled Gaussian mechanism at (σ, q), whatever its data size: q is the
run's, not batch / n, so neither q nor ε says how many interactions a device holds.

Pure: the device (client/pooled.py) and the server (server/steps/release.py) both call
:func:`plan_pooled`, so the σ a device accounts is the σ the server adds.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import RunConfig
from shared.privacy import PrivacyHistory, noise_for_target


@dataclass(frozen=True)
class PooledPlan:
    noise_multiplier: float  # σ: the noise on the cohort's sum is N(0, (σ C)²) per coordinate
    sample_rate: float  # q: each interaction's chance to be in a round's sum
    clip_norm: float  # C: each interaction's joint (global and private) gradient is clipped to C

    @property
    def noise_stddev(self) -> float:
        """σ C: the noise on every coordinate of the sum (and of each device's private part)."""
        return self.noise_multiplier * self.clip_norm

    def history_after(self, history: PrivacyHistory) -> PrivacyHistory:
        """A device's accountant after one more round: one step at (σ, q)."""
        return history.add(self.noise_multiplier, self.sample_rate, 1)


def plan_pooled(config: RunConfig) -> PooledPlan:
    """σ, q and C of a pooled run; with ``dp-target-epsilon``, σ reaches it after
    ``dp-planned-participations`` rounds of one step each."""
    q = config.dp_pooled_sample_rate
    sigma = config.dp_noise_multiplier
    if config.dp_target_epsilon > 0:
        sigma = noise_for_target(
            config.dp_target_epsilon,
            config.dp_delta,
            q,
            config.dp_planned_participations,
            config.dp_accountant,
        )
    return PooledPlan(noise_multiplier=sigma, sample_rate=q, clip_norm=config.dp_max_grad_norm)
