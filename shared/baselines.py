"""The references a run's model must clear, on the run's own split: popularity and random.

Both are scored with the models' protocol (same held-out items, negatives, tie rule), so a
popularity ranking below random says the test set is biased, not that the model is good. Any run
that has the pooled split calls :func:`record_data_summary` once: the centralized baseline does,
and a simulation's ServerApp can (deployed servers have no dataset, hence no summary).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from shared.data.summary import DataSummary, write_data_summary
from shared.metrics import random_hit_ratio
from shared.split import data_summary_for, split_for
from shared.training import evaluate_popularity
from shared.wire import FULL_HR10, FULL_NDCG10, HR10, NDCG10

if TYPE_CHECKING:
    from shared.config import RunConfig

POPULARITY = "popularity"
RANDOM = "random"


def data_summary_with_baselines(config: RunConfig) -> DataSummary:
    """The run's data summary with the popularity and random rankings' metrics on its split."""
    return (
        data_summary_for(config)
        .with_baseline(POPULARITY, evaluate_popularity(split_for(config)))
        .with_baseline(RANDOM, {HR10: random_hit_ratio(config.eval_negatives)})
    )


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
    return summary
