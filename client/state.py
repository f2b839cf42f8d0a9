"""What a device keeps between rounds, behind one small interface.

A device's state is two things the server must never see, and the model it was last sent:

- its private embedding (its own user row, trained across rounds and never sent);
- its DP-SGD accountant (:class:`PrivacyHistory`), so that ε composes over every round it took;
- the global model it last received (a deployed device recommends with it).

:class:`DeviceState` is that interface. :class:`ContextState` keeps it in Flower's node state
(``context.state``), which lives as long as the node's run: enough in simulation. The deployed
device keeps it in its encrypted store instead (:class:`client.store_adapter.StoreState`), so it
survives new processes, new runs and server restarts. The training code sees only the interface,
so a cohort engine (one node training many users) can give each user its own state: one
``ContextState`` per user with its own record names, or one store each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from client.training_round import TrainResult
from shared.privacy import PrivacyHistory

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
