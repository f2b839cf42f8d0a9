"""What a run's data was and how it was split, said in the log and kept in the run directory.

A reader of a run must be able to tell when the held-out items were drawn at random (a file
without timestamps, or ties on the latest one) and what the filters dropped: both change what
HR@10 means. ``config.json`` holds what was asked; ``data.json`` (:data:`DATA_SUMMARY_FILE`)
holds what the data turned out to be. Any run that loads a split writes it: the centralized
baseline does, through :func:`write_data_summary`; so can the ServerApp.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shared.data.filters import FilterReport

DATA_SUMMARY_FILE = "data.json"


@dataclass(frozen=True)
class DataSummary:
    dataset: str
    data_dir: str
    has_timestamps: bool
    has_ratings: bool  # a rating or count column (min-rating can filter on it)
    users: int
    items: int
    train_interactions: int
    random_holdouts: int  # users whose held-out item was a seeded draw among tied latest ones
    filters: FilterReport
    # reference rankings evaluated on the same split and protocol (name -> metric -> value)
    baselines: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @property
    def holdout(self) -> str:
        """The rule that picked each user's held-out item, in words."""
        if not self.has_timestamps:
            return "random: no timestamps, a seeded uniformly random interaction per user"
        return (
            f"latest interaction; {self.random_holdouts} of {self.users} users had tied latest "
            "timestamps and got a seeded random one of the tied"
        )

    def lines(self) -> list[str]:
        """The log lines: the holdout rule (loud when random) and what the filters dropped."""
        return [f"holdout: {self.holdout}", self.filters.describe()]

    def with_baseline(self, name: str, metrics: Mapping[str, float]) -> DataSummary:
        return replace(self, baselines={**self.baselines, name: dict(metrics)})

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "has_timestamps": self.has_timestamps,
            "has_ratings": self.has_ratings,
            "holdout": "latest" if self.has_timestamps else "random",
            "holdout_rule": self.holdout,
            "random_holdouts": self.random_holdouts,
            "users": self.users,
            "items": self.items,
            "train_interactions": self.train_interactions,
            "filters": self.filters.to_json(),
            "baselines": {k: dict(v) for k, v in self.baselines.items()},
        }


def write_data_summary(run_dir: Path, summary: DataSummary) -> Path:
    path = Path(run_dir) / DATA_SUMMARY_FILE
    path.write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    return path
