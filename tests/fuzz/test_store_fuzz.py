"""The device store, fuzzed as a state machine against a plain-Python model of it.

Every SDK write (record, delete, forget, the training state the ClientApp keeps) is drawn valid
or invalid (bad ids, timestamps, ratings, huge values, unreadable arrays); invalid ones must be
refused with a ValueError (or NoSuchRecordError) and leave the store exactly as it was. Reopening
keeps everything, a wrong key is refused, and a flipped byte anywhere in the file either changes
nothing that can be read or surfaces as a store error: never a wrong count or a wrong record.
"""

from __future__ import annotations

import math
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from client.device import HISTORY, POLICY, PRIVATE, UNPROTECTED, Device
from client.policy import DevicePolicy
from client.store import NoSuchRecordError, StoreError, WrongKeyError
from shared.privacy import PrivacyHistory
from tests.conftest import small_config

MAX_ITEM = 2**63 - 1
NOW = time.time()
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.just([1]),
    st.just(np.float32(1.5)),
)
ITEMS = st.one_of(
    st.integers(0, 60),
    st.integers(-(2**70), 2**70),
    st.sampled_from([MAX_ITEM, MAX_ITEM + 1, 2**64, -1]),
    st.floats(),
    st.just(np.uint64(2**64 - 1)),
    st.just(np.int64(5)),
    JUNK,
)
RATINGS = st.one_of(st.none(), st.floats(), st.integers(-(2**70), 2**70), JUNK)
TIMESTAMPS = st.one_of(
    st.none(),
    st.floats(0, NOW),
    st.floats(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([NOW * 1000, NOW + 2 * 86_400, -1e-9, 1e11, 0]),
    JUNK,
)


def _is_int(v: object) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_finite(v: object) -> bool:
    if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def record_ok(item, rating, timestamp, num_items) -> bool:
    """The oracle for Device.record, written from its docstring (docs/design.md §2)."""
    if not _is_int(item) or not 0 <= item <= MAX_ITEM or (num_items and item >= num_items):
        return False
    if rating is not None and not _is_finite(rating):
        return False
    return timestamp is None or (_is_finite(timestamp) and 0 <= timestamp <= time.time() + 86_400)


class StoreMachine(RuleBasedStateMachine):
    records = Bundle("records")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="confide-fuzz-"))
        self.path = self.dir / "device.db"
        self.key = secrets.token_bytes(32)
        self.device = Device.open(self.path, self.key)
        self.device_id = self.device.device_id
        self.rows: dict[int, tuple[int, float, float | None]] = {}  # the model
        self.last_id = 0  # AUTOINCREMENT: ids are never reused until Forget
        self.names: set[str] = set()
        self.num_items = 0  # unknown until a run config arrives
        self.unprotected = 0

    def teardown(self) -> None:
        self.device.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- interactions ------------------------------------------------------------------------
    @rule(target=records, item=ITEMS, rating=RATINGS, timestamp=TIMESTAMPS)
    def record(self, item, rating, timestamp):
        if not record_ok(item, rating, timestamp, self.num_items):
            with pytest.raises(ValueError):
                self.device.record(item, rating=rating, timestamp=timestamp)
            return -1  # a record id that never exists
        record_id = self.device.record(item, rating=rating, timestamp=timestamp)
        assert record_id == self.last_id + 1
        self.last_id = record_id
        stored = self.device.interactions()[-1]
        if timestamp is None:
            assert NOW - 1 <= stored.timestamp <= time.time() + 1
        self.rows[record_id] = (
            int(item),
            stored.timestamp if timestamp is None else float(timestamp),
            None if rating is None else float(rating),
        )
        return record_id

    @rule(
        target=records,
        item=st.one_of(st.integers(0, 60), st.just(MAX_ITEM)),
        rating=st.one_of(st.none(), st.floats(-1e300, 1e300)),
        timestamp=st.one_of(st.none(), st.floats(0, NOW), st.integers(0, int(NOW))),
    )
    def record_valid(self, item, rating, timestamp):
        if self.num_items:
            item %= self.num_items
        return self.record(item, rating, timestamp)

    @rule(record_id=consumes(records))
    def delete_recorded(self, record_id):
        self.delete(record_id)

    @rule(record_id=st.one_of(st.integers(-(2**70), 2**70), st.floats(), JUNK))
    def delete(self, record_id):
        if not _is_int(record_id):
            with pytest.raises(ValueError):
                self.device.delete_interaction(record_id)
        elif record_id not in self.rows:
            with pytest.raises(NoSuchRecordError):
                self.device.delete_interaction(record_id)
        else:
            gone = self.device.delete_interaction(record_id)
            assert (gone.item, gone.timestamp, gone.rating) == self.rows.pop(record_id)

    @rule(confirm=st.one_of(st.just("the device id"), JUNK, st.text(max_size=40)))
    def forget(self, confirm):
        if confirm == "the device id":
            confirm = self.device_id
        if confirm != self.device_id:
            with pytest.raises(ValueError):
                self.device.forget(confirm)
            return
        self.device.forget(confirm)
        self.rows.clear()
        self.names.clear()
        self.last_id = 0
        self.num_items = 0
        self.unprotected = 0

    # -- training state the deployed ClientApp keeps ------------------------------------------
    @rule(num_items=st.integers(-1, 60), unreadable=st.booleans())
    def save_global(self, num_items, unreadable):
        arrays = [np.arange(3, dtype=np.float32)]
        if unreadable:
            arrays.append(np.array([object()], dtype=object))  # would need pickle to read
        config = small_config(num_items=max(num_items, 0))
        if unreadable or num_items < 1:
            with pytest.raises(ValueError):
                self.device.save_global(config, arrays)
            return
        self.device.save_global(config, arrays)
        self.names |= {"run-config", "global-model"}
        self.num_items = num_items
        assert self.device.global_model()[0].tolist() == [0.0, 1.0, 2.0]

    @rule(
        private=st.sampled_from(["none", "ok", "object"]),
        history=st.sampled_from(["none", "ok", "nan", "negative-steps"]),
    )
    def save_training(self, private, history):
        arrays = {
            "none": None,
            "ok": {"user": np.ones((1, 4), np.float32)},
            "object": {"user": np.array([None], dtype=object)},
        }[private]
        entries = {
            "none": None,
            "ok": ((1.1, 0.01, 30),),
            "nan": ((math.nan, 0.01, 3),),
            "negative-steps": ((1.0, math.inf, 3),),
        }[history]
        hist = None if entries is None else PrivacyHistory(entries)
        if private == "object" or history in ("nan", "negative-steps"):
            with pytest.raises(ValueError):
                self.device.save_training(arrays, hist)
            return
        self.device.save_training(arrays, hist)
        self.names |= {PRIVATE} if arrays else set()
        self.names |= {HISTORY} if hist else set()

    @rule(cap=st.one_of(st.floats(), st.integers(-5, 5)), delta=st.floats())
    def save_policy(self, cap, delta):
        ok = _is_finite(cap) and cap >= 0 and _is_finite(delta) and 0 < delta < 1
        if not ok:
            with pytest.raises(ValueError):
                self.device.save_policy(DevicePolicy(epsilon_cap=cap, delta=delta))
            return
        self.device.save_policy(DevicePolicy(epsilon_cap=cap, delta=delta))
        if cap:
            self.names.add(POLICY)
            assert self.device.device_policy() == DevicePolicy(epsilon_cap=cap, delta=delta)
        else:
            self.names.discard(POLICY)

    @rule()
    def unprotected_round(self):
        self.device.count_unprotected_round()
        self.unprotected += 1
        self.names.add(UNPROTECTED)
        assert int.from_bytes(self.device.store.get(UNPROTECTED), "little") == self.unprotected

    # -- the file ------------------------------------------------------------------------------
    @rule()
    def reopen(self):
        self.device.close()
        self.device = Device.open(self.path, self.key)
        assert self.device.device_id == self.device_id

    @rule()
    def wrong_key(self):
        with pytest.raises(WrongKeyError):
            Device.open(self.path, secrets.token_bytes(32)).close()

    @precondition(lambda self: self.path.stat().st_size > 0)
    @rule(where=st.floats(0, 1), mask=st.integers(1, 255))
    def flip_a_byte(self, where, mask):
        self.device.close()
        backup = self.path.read_bytes()
        data = bytearray(backup)
        at = int(where * (len(data) - 1))
        data[at] ^= mask
        self.path.write_bytes(bytes(data))
        try:
            device = Device.open(self.path, self.key)
            try:
                self.check_contents(device)  # whatever it reads must be the truth
                device.store.verify()
            finally:
                device.close()
        except StoreError:
            pass  # CorruptStoreError, TamperedError, WrongKeyError: the damage was seen
        self.path.write_bytes(backup)  # restore, and go on from the true state
        for extra in self.dir.glob("device.db-*"):
            extra.unlink()
        self.device = Device.open(self.path, self.key)

    # -- what must hold after every step -------------------------------------------------------
    def check_contents(self, device: Device) -> None:
        got = {i.record_id: (i.item, i.timestamp, i.rating) for i in device.interactions()}
        assert got == self.rows
        assert set(device.store.names()) - {"secret", "serving-embedding"} == self.names
        for name in device.store.names():
            device.store.get(name)  # authenticates
        status = device.status()
        assert status["interactions"] == len(self.rows)
        outside = sum(1 for item, _, _ in self.rows.values() if item >= (self.num_items or 2**64))
        assert status["outside_catalogue"] == outside
        assert status["num_items"] == self.num_items

    @invariant()
    def store_matches_the_model(self):
        self.check_contents(self.device)


TestStore = StoreMachine.TestCase
