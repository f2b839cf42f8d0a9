"""The run directory: resolved config, metrics per round (or epoch), final model, plot.

A run directory is created fresh (its rows, ledger, checkpoint and simulated devices' state from
any earlier run in it are removed) or continued by a resume (:meth:`RunDirectory.resume`), which
keeps the rows up to the checkpoint's round and drops any later, partial ones. The server writes a
round's rows BEFORE its checkpoint: a crash between the two leaves rows the checkpoint does not
cover, which the resume drops and the rerun round writes again, once. The other order could lose
a checkpointed round's rows for good.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import RunConfig
from shared.records import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DEVICES_DIR,
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

    def __init__(
        self, path: Path, config: RunConfig, kind: str, *, resumed_after: int | None = None
    ) -> None:
        """A new run in ``path``, or (``resumed_after``) the continuation of the run there."""
        self.path = path.resolve()
        self.kind = kind
        self.path.mkdir(parents=True, exist_ok=True)
        resolved = {"kind": kind, **config.to_mapping(), "out-dir": str(self.path)}
        resolved["resume-from"] = ""  # how it was continued is not part of the run's config
        fresh = resumed_after is None
        if not fresh:
            saved = self.path / CONFIG_FILE
            earlier = json.loads(saved.read_text()).get("resumed", []) if saved.exists() else []
            resolved["resumed"] = [*earlier, {"after_round": resumed_after}]
        atomic_write_text(self.path / CONFIG_FILE, json.dumps(resolved, indent=2) + "\n")
        if fresh:  # nothing of an earlier run in this directory may leak into this one
            (self.path / METRICS_FILE).write_text("")
            for name in (LEDGER_FILE, CHECKPOINT_FILE):
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(self.path / DEVICES_DIR, ignore_errors=True)

    @classmethod
    def create(cls, config: RunConfig, kind: str) -> RunDirectory:
        return cls(
            Path(config.out_dir) if config.out_dir else default_run_dir(config, kind), config, kind
        )

    @classmethod
    def resume(cls, path: Path, config: RunConfig, done_round: int) -> RunDirectory:
        """Continue a federated run after its round ``done_round``: rows after it are dropped.

        ``config.json`` is rewritten with ``config``, which the checkpoint has checked may differ
        from the saved one only in keys a resume may change, and lists the rounds resumed after.
        """
        run_dir = cls(path, config, "federated", resumed_after=done_round)
        for name in (METRICS_FILE, LEDGER_FILE):
            keep_rounds_through(run_dir.path / name, done_round)
        return run_dir

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
        atomic_save_npz(path, dict(zip(names, arrays, strict=True)))
        return path

    def plot(self) -> Path:
        return plot_metrics(self.path)


def keep_rounds_through(path: Path, done_round: int) -> int:
    """Keep the JSONL rows of rounds 1..``done_round`` (atomically); returns how many were dropped.

    A row after the checkpoint, or a line a crash cut short, belongs to a round that runs again.
    """
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1  # a partial last line: its round was not checkpointed
            continue
        number = row.get("round") if isinstance(row, dict) else None
        if isinstance(number, int) and number <= done_round:
            kept.append(line)
        else:
            dropped += 1
    atomic_write_text(path, "".join(line + "\n" for line in kept))
    return dropped


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file in the same directory, then rename.

    A reader (or a resume after a crash) sees the old file or the new one, never half of one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` to ``path`` atomically (no pickles: only plain arrays and strings)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


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
