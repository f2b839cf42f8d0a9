"""The references a run's model must clear, on the run's own split: popularity and random.

A DP run also gets the popularity ranking released under its own unit and target ε
(:mod:`shared.dp_popularity`): the line a private model must clear. All are scored with the
models' protocol (same held-out items, negatives, tie rule), so a
popularity ranking below random says the test set is biased, not that the model is good. Any run
that has the pooled split calls :func:`record_data_summary` once: the centralized baseline does,
and a simulation's ServerApp can (deployed servers have no dataset, hence no summary).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shared.data.summary import DataSummary, write_data_summary
from shared.dp_popularity import dp_popularity_scores
from shared.metrics import random_hit_ratio
from shared.split import LeaveOneOut, data_summary_for, split_for
from shared.streams import Stream, generator, secret_seed
from shared.training import (
    beyond_accuracy_of,
    evaluate_popularity,
    evaluate_shared_scores,
    popularity_lists,
)
from shared.wire import FULL_HR10, FULL_NDCG10, HR10, NDCG10

if TYPE_CHECKING:
    from shared.config import RunConfig

POPULARITY = "popularity"
RANDOM = "random"
DP_POPULARITY = "dp_popularity_{unit}"  # one per DP unit the run targets an ε for


def dp_targets(config: RunConfig) -> list[tuple[str, float, float]]:
    """(unit, target ε, δ) of every DP unit the run calibrates to a target ε."""
    targets = []
    if config.dp_user and config.dp_user_target_epsilon > 0:
        targets.append(("user", config.dp_user_target_epsilon, config.dp_user_delta))
    if config.dp_interaction and config.dp_target_epsilon > 0:
        targets.append(("interaction", config.dp_target_epsilon, config.dp_delta))
    return targets


def dp_popularity_baseline(
    config: RunConfig, split: LeaveOneOut, unit: str, target_epsilon: float, delta: float
) -> dict[str, float]:
    """The DP popularity ranking's metrics, with the ε it was released at and its noise."""
    seed = config.seed if config.dp_reproducible_noise else secret_seed()
    rng = generator(seed, Stream.DP_POPULARITY, 0 if unit == "user" else 1)
    scores, release = dp_popularity_scores(
        split, target_epsilon, delta, unit, rng, accountant=config.dp_accountant
    )
    return {
        **evaluate_shared_scores(split, scores),
        "epsilon": release.epsilon,
        "delta": release.delta,
        "noise_stddev": release.noise_stddev,
    }


def popularity_beyond_accuracy(
    split: LeaveOneOut, vectors: np.ndarray | None = None
) -> dict[str, float]:
    """Coverage, novelty and exposure Gini of the popularity ranking's top-10 lists, and their
    diversity when item vectors are given (they come from a model: diversity is measured in
    that model's item space, so it is recorded beside that model's own, not in data.json)."""
    figures = beyond_accuracy_of(popularity_lists(split), split, vectors)
    return {k: v for k, v in figures.items() if v is not None}


def data_summary_with_baselines(config: RunConfig) -> DataSummary:
    """The run's data summary with the popularity and random rankings' metrics on its split."""
    split = split_for(config)
    popularity = evaluate_popularity(split) | popularity_beyond_accuracy(split)
    summary = (
        data_summary_for(config)
        .with_baseline(POPULARITY, popularity)
        .with_baseline(RANDOM, {HR10: random_hit_ratio(config.eval_negatives)})
    )
    for unit, target, delta in dp_targets(config):
        metrics = dp_popularity_baseline(config, split, unit, target, delta)
        summary = summary.with_baseline(DP_POPULARITY.format(unit=unit), metrics)
    return summary


def record_data_summary(
    config: RunConfig, run_dir: Path, echo: Callable[[str], object] = print
) -> DataSummary:
    """Say what the run's data is (holdout rule, filters) and how the baselines score on its
    split, in the log; keep it as ``data.json`` in ``run_dir``."""
    summary = data_summary_with_baselines(config)
    write_data_summary(run_dir, summary)
    for line in summary.lines():
        echo(f"[confide] {line}")
    pop = summary.baselines[POPULARITY]
    echo(
        f"[confide] baselines on this split: popularity HR@10 {pop[HR10]:.4f} NDCG@10 "
        f"{pop[NDCG10]:.4f} (full {pop[FULL_HR10]:.4f}/{pop[FULL_NDCG10]:.4f}); random HR@10 "
        f"{summary.baselines[RANDOM][HR10]:.4f}"
    )
    for unit, _, _ in dp_targets(config):
        dp = summary.baselines[DP_POPULARITY.format(unit=unit)]
        echo(
            f"[confide] the line a private model must clear: popularity released at {unit}-level "
            f"ε {dp['epsilon']:.3g} (δ {dp['delta']:g}) HR@10 {dp[HR10]:.4f} NDCG@10 "
            f"{dp[NDCG10]:.4f}"
        )
    return summary
