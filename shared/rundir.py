"""The run directory: resolved config, metrics per round (or epoch), final model, plot."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import RunConfig
from shared.records import (
    CONFIG_FILE,
    LEDGER_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PLOT_FILE,
    LedgerEntry,
    RoundRecord,
)
from shared.wire import FULL_HR10, FULL_NDCG10, HR10, NDCG10


def default_run_dir(config: RunConfig, kind: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return Path("runs") / f"{stamp}-{kind}-{config.model}-{config.dataset}"


class RunDirectory:
    """Writes one run's files; every metrics record is flushed as soon as it exists."""

    def __init__(self, path: Path, config: RunConfig, kind: str) -> None:
        self.path = path.resolve()
        self.kind = kind
        self.path.mkdir(parents=True, exist_ok=True)
        resolved = {"kind": kind, **config.to_mapping(), "out-dir": str(self.path)}
        (self.path / CONFIG_FILE).write_text(json.dumps(resolved, indent=2) + "\n")
        (self.path / METRICS_FILE).write_text("")

    @classmethod
    def create(cls, config: RunConfig, kind: str) -> RunDirectory:
        return cls(
            Path(config.out_dir) if config.out_dir else default_run_dir(config, kind), config, kind
        )

    def log(self, record: RoundRecord | dict[str, Any]) -> None:
        """One metrics row: a federated round, or a centralized run's epoch (a plain dict)."""
        row = record.to_json() if isinstance(record, RoundRecord) else record
        with (self.path / METRICS_FILE).open("a") as fh:
            fh.write(json.dumps(row) + "\n")

    def log_privacy(self, entry: LedgerEntry) -> None:
        with (self.path / LEDGER_FILE).open("a") as fh:
            fh.write(json.dumps(entry.to_json()) + "\n")

    def records(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def save_model(self, names: Sequence[str], arrays: Sequence[np.ndarray]) -> Path:
        path = self.path / MODEL_FILE
        np.savez(path, **dict(zip(names, arrays, strict=True)))
        return path

    def plot(self) -> Path:
        return plot_metrics(self.path)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every metrics row as written, rounds or epochs (typed rounds: shared.records.read_rounds)."""
    lines = (Path(run_dir) / METRICS_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def plot_metrics(run_dir: Path) -> Path:
    """HR@10 and NDCG@10 (sampled and full ranking) over rounds or epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_metrics(run_dir) if HR10 in r]
    x_key = "epoch" if records and "epoch" in records[0] else "round"
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label, style in (
        (HR10, "HR@10 (1 + 99 sampled)", "-o"),
        (NDCG10, "NDCG@10 (1 + 99 sampled)", "-s"),
        (FULL_HR10, "HR@10 (full ranking)", "--o"),
        (FULL_NDCG10, "NDCG@10 (full ranking)", "--s"),
    ):
        ax.plot([r[x_key] for r in records], [r[key] for r in records], style, label=label, ms=3)
    ax.set_xlabel(x_key)
    ax.set_ylabel("metric")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(Path(run_dir).name, fontsize=9)
    fig.tight_layout()
    path = Path(run_dir) / PLOT_FILE
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
