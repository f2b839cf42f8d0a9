"""RECORD-phase steps: the round's metrics row and its privacy ledger entry."""

from __future__ import annotations

import time
from collections.abc import Mapping
from logging import INFO

from flwr.common import log

from server.pipeline import Phase, Step, Unit
from server.progress import progress_line
from server.provenance import library_versions
from server.round import RoundState
from shared.config import RunConfig
from shared.records import InteractionLevel, LedgerEntry, SecureAggregation, UserLevel
from shared.rundir import RunDirectory


class RoundRecorder(Step):
    """Writes the round's ``metrics.jsonl`` row, then prints the progress line from it."""

    phase = Phase.RECORD

    def __init__(self, run_dir: RunDirectory, total_rounds: int) -> None:
        self.run_dir = run_dir
        self.total_rounds = total_rounds

    def finish(self, rnd: RoundState, units: Mapping[str, Unit]) -> None:
        now = time.monotonic()
        rnd.note(
            round_seconds=round(now - rnd.started, 3),
            elapsed_seconds=round(now - rnd.run_started, 3),
        )
        self.run_dir.log(rnd.record)
        log(INFO, "%s", progress_line(rnd.record, self.total_rounds))


class PrivacyLedger(Step):
    """Writes the round's ledger entry from the units the mechanisms contributed (DP runs only).

    A unit no step contributed is recorded as off, so a reviewer sees every unit on every line.
    """

    phase = Phase.RECORD
    must_follow = ("RoundRecorder",)

    def __init__(self, config: RunConfig, run_dir: RunDirectory) -> None:
        self.config = config
        self.run_dir = run_dir

    def finish(self, rnd: RoundState, units: Mapping[str, Unit]) -> None:
        if not (self.config.dp_interaction or self.config.dp_user):
            return
        entry = LedgerEntry(
            round=rnd.number,
            stopped=rnd.record.stopped,
            interaction_level=units.get("interaction_level", InteractionLevel()),
            user_level=units.get("user_level", UserLevel()),
            secure_aggregation=units.get("secure_aggregation", SecureAggregation()),
            library_versions=library_versions(),
        )
        self.run_dir.log_privacy(entry)
