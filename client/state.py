"""What a device keeps between rounds, behind one small interface.

A device's state is two things the server must never see, and the model it was last sent:

- its private embedding (its own user row, trained across rounds and never sent);
- its DP-SGD accountant (:class:`PrivacyHistory`), so that ε composes over every round it took;
- the global model it last received (a deployed device recommends with it).

:class:`DeviceState` is that interface. :class:`ContextState` keeps it in Flower's node state
(``context.state``), which lives as long as the node's run. The deployed
device keeps it in its encrypted store instead (:class:`client.store_adapter.StoreState`), so it
survives new processes, new runs and server restarts. A simulated device keeps it in its own file
under the run directory (:class:`FileState`), so that a resumed simulation (a new Flower run, with a
new ``context.state``) continues each device's embedding and accountant. The training code sees only
the interface, so a cohort engine (one node training many users) can give each user its own state:
one ``ContextState`` per user with its own record names, or one store each.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from client.training_round import TrainResult
from shared.privacy import PrivacyHistory
from shared.records import DEVICES_DIR
from shared.rundir import atomic_save_npz

PRIVATE_RECORD = "confide.private-embedding"
HISTORY_RECORD = "confide.privacy-history"  # the device's DP-SGD accountant, whole run


class DeviceState(Protocol):
    """One user's state between rounds. Nothing here is ever part of a reply."""

    def private_embedding(self) -> dict[str, np.ndarray] | None:
        """The trained private rows, or None before the first round (then they are seeded)."""
        ...

    def privacy_history(self) -> PrivacyHistory:
        """Every DP-SGD step this user took so far (empty before the first)."""
        ...

    def save_fit(self, result: TrainResult, sent_model: Sequence[np.ndarray]) -> None:
        """After a fit: keep the private rows and accountant of ``result``, and the model sent."""
        ...

    def save_model(self, sent_model: Sequence[np.ndarray]) -> None:
        """After an evaluation: keep the latest global model (where the state keeps one)."""
        ...


@dataclass(frozen=True)
class ContextState:
    """:class:`DeviceState` in a Flower ``RecordDict`` (a node's ``context.state``).

    The record names default to one user per node; give each user its own names to keep several
    users in one ``RecordDict``. The global model is not kept: the node receives it every round.
    """

    records: RecordDict
    private_record: str = PRIVATE_RECORD
    history_record: str = HISTORY_RECORD

    def private_embedding(self) -> dict[str, np.ndarray] | None:
        record = self.records.array_records.get(self.private_record)
        return None if record is None else {k: v.numpy() for k, v in record.items()}

    def privacy_history(self) -> PrivacyHistory:
        record = self.records.array_records.get(self.history_record)
        return (
            PrivacyHistory()
            if record is None
            else PrivacyHistory.from_array(record["steps"].numpy())
        )

    def save_fit(self, result: TrainResult, sent_model: Sequence[np.ndarray]) -> None:
        self._put(self.private_record, result.private)
        self._put(self.history_record, {"steps": result.history.to_array()})

    def save_model(self, sent_model: Sequence[np.ndarray]) -> None:
        pass  # arrives with every round: nothing to keep

    def load(self, private: dict[str, np.ndarray] | None, history: PrivacyHistory) -> None:
        """Replace what is held with ``private`` and ``history``; what is missing is dropped.

        For a state that mirrors another source of truth (the device store): after ``forget()``
        there, no stale embedding or accountant may survive here.
        """
        self._put(self.private_record, private)
        self._put(self.history_record, {"steps": history.to_array()} if history.entries else None)

    def _put(self, name: str, arrays: dict[str, np.ndarray] | None) -> None:
        if arrays is None:
            self.records.array_records.pop(name, None)
        else:
            self.records.array_records[name] = ArrayRecord(
                array_dict={k: Array(v) for k, v in arrays.items()}
            )


@dataclass(frozen=True)
class FileState:
    """:class:`DeviceState` of a SIMULATED device, in its own file ``RUN_DIR/devices/user-N.npz``.

    Simulated devices run on the simulation host, so their state may live in the run directory;
    the server code never reads these files (it sees only replies). Flower's ``context.state``
    would not survive a resume (a new Flower run), and a device restarting from a fresh embedding
    and an empty accountant would report an ε that restarted from 0.

    Each write is atomic, and the version before it is kept (``.prev``): a run that stopped in
    the middle of round r may have devices that already saved round r, and the resumed run trains
    round r again. :meth:`at_round` reads the newest version saved in a round before r, so a rerun
    round starts where the first attempt did (its ε is not counted twice).
    """

    path: Path
    before_round: int | None = None  # None: the newest version

    @classmethod
    def of_user(cls, out_dir: str | Path, user: int) -> FileState:
        """The state file of simulated user ``user`` in the run directory ``out_dir``."""
        return cls(Path(out_dir) / DEVICES_DIR / f"user-{user}.npz")

    def at_round(self, server_round: int) -> FileState:
        """This state as a round ``server_round`` must see it: saved in rounds before it."""
        return replace(self, before_round=server_round)

    @property
    def previous(self) -> Path:
        return self.path.with_name(self.path.stem + ".prev.npz")

    def private_embedding(self) -> dict[str, np.ndarray] | None:
        arrays = self._version()
        if arrays is None:
            return None
        return {
            k.removeprefix("private/"): v for k, v in arrays.items() if k.startswith("private/")
        }

    def privacy_history(self) -> PrivacyHistory:
        arrays = self._version()
        if arrays is None or "history" not in arrays:
            return PrivacyHistory()
        return PrivacyHistory.from_array(arrays["history"])

    def save_fit(self, result: TrainResult, sent_model: Sequence[np.ndarray]) -> None:
        if self.before_round is None:
            raise ValueError("FileState.save_fit needs the round: call at_round(server_round)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        current = _read(self.path)
        if current is not None and int(current["round"]) < self.before_round:
            os.replace(self.path, self.previous)  # the state this round started from
        arrays = {f"private/{k}": v for k, v in result.private.items()}
        arrays |= {"round": np.array(self.before_round), "history": result.history.to_array()}
        atomic_save_npz(self.path, arrays)

    def save_model(self, sent_model: Sequence[np.ndarray]) -> None:
        pass  # arrives with every round: nothing to keep

    def _version(self) -> dict[str, np.ndarray] | None:
        for path in (self.path, self.previous):
            arrays = _read(path)
            if arrays is not None and (
                self.before_round is None or int(arrays["round"]) < self.before_round
            ):
                return arrays
        return None


def _read(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        return None
