"""The encrypted store: round trip, tamper and move detection, nothing in the clear, forget."""

import secrets
import sqlite3

import numpy as np
import pytest

from client.device import GLOBAL, HISTORY, PRIVATE, RUN_CONFIG, Device
from client.store import (
    CorruptStoreError,
    EncryptedStore,
    NoSuchRecordError,
    TamperedError,
    WrongKeyError,
)
from shared.models import build_model, global_arrays, private_state
from shared.privacy import PrivacyHistory
from tests.conftest import small_config

# Distinctive ids: their 8-byte encodings must never appear in the file.
ITEMS = [123457, 98761, 55511, 70003]


@pytest.fixture
def key():
    return secrets.token_bytes(32)


def _filled(path, key) -> Device:
    """A device with every kind of record: interactions and each named state."""
    config = small_config(num_items=200000)
    device = Device.open(path, key)
    for t, item in enumerate(ITEMS):
        device.record(item, rating=None if t % 2 else 3.5, timestamp=1_000_000 + t)
    model = build_model(config.model, 1, 16, dim=config.embedding_dim, mlp_layers=config.layers)
    device.save_training(private_state(model), PrivacyHistory().add(1.1, 0.5, 4))
    device.save_global(config, global_arrays(model))
    device.seed_identity(7)  # creates the device secret
    return device


def _rows(path) -> list[tuple[str, str, str]]:
    """(table, key column, key) of every encrypted record, plus the key check."""
    with sqlite3.connect(path) as db:
        rows = [("interactions", "id", r[0]) for r in db.execute("SELECT id FROM interactions")]
        rows += [("state", "name", r[0]) for r in db.execute("SELECT name FROM state")]
    return rows


def _flip_bit(path, table, column, key, field, bit=0):
    with sqlite3.connect(path) as db:
        (blob,) = db.execute(f"SELECT {field} FROM {table} WHERE {column} = ?", (key,)).fetchone()
        blob = bytearray(blob)
        blob[len(blob) // 2] ^= 1 << bit
        db.execute(f"UPDATE {table} SET {field} = ? WHERE {column} = ?", (bytes(blob), key))


def _read_everything(path, key):
    with EncryptedStore(path, key) as store:
        store.verify()


def test_round_trip(tmp_path, key):
    path = tmp_path / "device.db"
    with _filled(path, key) as device:
        before = device.interactions()
        private, history = device.private_embedding(), device.privacy_history()
        arrays, config = device.global_model(), device.run_config()
    with Device.open(path, key) as device:  # reopened with the same key: everything is back
        assert device.interactions() == before
        assert [(i.item, i.timestamp, i.rating) for i in before] == [
            (item, 1_000_000.0 + t, None if t % 2 else 3.5) for t, item in enumerate(ITEMS)
        ]
        assert [i.record_id for i in before] == [1, 2, 3, 4]
        assert device.private_embedding().keys() == private.keys()
        for name in private:
            np.testing.assert_array_equal(device.private_embedding()[name], private[name])
        assert device.privacy_history() == history
        assert all(np.array_equal(a, b) for a, b in zip(device.global_model(), arrays, strict=True))
        assert device.run_config() == config


def test_wrong_key_is_refused_clearly(tmp_path, key):
    path = tmp_path / "device.db"
    _filled(path, key).close()
    with pytest.raises(WrongKeyError, match="wrong key"):
        EncryptedStore(path, secrets.token_bytes(32))
    with pytest.raises(ValueError, match="32 random bytes"):
        EncryptedStore(path, b"short")


def test_every_record_kind_detects_a_one_bit_flip(tmp_path, key):
    path = tmp_path / "device.db"
    _filled(path, key).close()
    rows = _rows(path)
    kinds = {k for _, _, k in rows if isinstance(k, str)}
    assert {PRIVATE, HISTORY, GLOBAL, RUN_CONFIG} <= kinds
    for table, column, record in rows:
        for field, bit in (("ciphertext", 0), ("ciphertext", 7), ("nonce", 3)):
            _flip_bit(path, table, column, record, field, bit)
            with pytest.raises(TamperedError, match=f"record {table}/{record} .*failed auth"):
                _read_everything(path, key)
            _flip_bit(path, table, column, record, field, bit)  # flip back: readable again
            _read_everything(path, key)
    # The key check record: a flipped bit reads as a wrong key (nothing can be trusted).
    with sqlite3.connect(path) as db:
        (blob,) = db.execute("SELECT value FROM meta WHERE name = 'key-check'").fetchone()
        flipped = bytes([blob[0] ^ 1]) + bytes(blob[1:])
        db.execute("UPDATE meta SET value = ? WHERE name = 'key-check'", (flipped,))
    with pytest.raises(WrongKeyError):
        EncryptedStore(path, key)


def test_record_moved_to_another_id_or_name_is_detected(tmp_path, key):
    path = tmp_path / "device.db"
    _filled(path, key).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE interactions SET id = 99 WHERE id = 2")
    with pytest.raises(TamperedError, match="interactions/99"):
        _read_everything(path, key)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE interactions SET id = 2 WHERE id = 99")
        # swap two state records' names (e.g. an old embedding passed off as the accountant)
        db.execute(f"UPDATE state SET name = 'tmp' WHERE name = '{PRIVATE}'")
        db.execute(f"UPDATE state SET name = '{PRIVATE}' WHERE name = '{HISTORY}'")
        db.execute(f"UPDATE state SET name = '{HISTORY}' WHERE name = 'tmp'")
    with pytest.raises(TamperedError, match="state/"):
        _read_everything(path, key)


def test_record_moved_to_another_device_is_detected(tmp_path, key):
    # Same key on purpose: only the associated data (device id) tells the records apart.
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    _filled(a, key).close()
    with Device.open(b, key) as device:
        device.record(5, timestamp=1.0)
    with sqlite3.connect(a) as db:
        rows = db.execute("SELECT id, nonce, ciphertext FROM interactions").fetchall()
        state = db.execute(f"SELECT * FROM state WHERE name = '{HISTORY}'").fetchone()
    with sqlite3.connect(b) as db:
        db.execute("INSERT INTO interactions VALUES (?, ?, ?)", rows[1])
    with pytest.raises(TamperedError, match=f"interactions/{rows[1][0]}"):
        _read_everything(b, key)
    with sqlite3.connect(b) as db:
        db.execute("DELETE FROM interactions WHERE id = ?", (rows[1][0],))
        db.execute("INSERT INTO state VALUES (?, ?, ?)", state)
    with pytest.raises(TamperedError, match=f"state/{HISTORY}"):
        _read_everything(b, key)


def test_no_plaintext_item_ids_in_the_database_file(tmp_path, key):
    path = tmp_path / "device.db"
    _filled(path, key).close()
    raw = path.read_bytes()
    for item in ITEMS:
        for encoding in (
            item.to_bytes(8, "little"),
            item.to_bytes(4, "little"),
            item.to_bytes(8, "big"),
            str(item).encode(),
        ):
            assert encoding not in raw, (item, encoding)
    # the same ids do show up when stored in the clear: the scan can fail
    assert ITEMS[0].to_bytes(8, "little") in np.array(ITEMS, dtype="<i8").tobytes()
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_forget_leaves_nothing(tmp_path, key):
    path = tmp_path / "device.db"
    device = _filled(path, key)
    with sqlite3.connect(path) as db:
        blobs = [bytes(r[0]) for r in db.execute("SELECT ciphertext FROM interactions")]
        blobs += [bytes(r[0]) for r in db.execute("SELECT ciphertext FROM state")]
        blobs += [bytes(r[0]) for r in db.execute("SELECT nonce FROM state")]
    assert all(blob in path.read_bytes() for blob in blobs)
    device.forget(device.device_id)
    assert device.interactions() == [] and device.store.names() == []
    assert device.private_embedding() is None and device.privacy_history() == PrivacyHistory()
    assert device.privacy_budget().epsilon == 0.0 and device.global_model() is None
    device.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM interactions").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM state").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM sqlite_sequence").fetchone() == (0,)
    raw = path.read_bytes()
    assert not any(blob[:16] in raw for blob in blobs)  # not even a fragment of a ciphertext
    assert not list(tmp_path.glob("device.db-*"))  # no journal left behind
    with Device.open(path, key) as device:  # still usable, ids start over
        assert device.record(ITEMS[0], timestamp=1.0) == 1


def test_records_copied_back_after_forget_do_not_authenticate(tmp_path, key):
    path = tmp_path / "device.db"
    device = _filled(path, key)
    with sqlite3.connect(path) as db:
        old = db.execute("SELECT id, nonce, ciphertext FROM interactions").fetchall()
    device.forget(device.device_id)
    device.close()
    with sqlite3.connect(path) as db:
        db.executemany("INSERT INTO interactions VALUES (?, ?, ?)", old)
    with pytest.raises(TamperedError):
        _read_everything(path, key)


def damage_page_header(path, table="interactions", cells=67):
    """Set the cell count in the header of ``table``'s root page: SQLite's structure, no record.

    The file change counter is bumped as any writer's would be, so an open connection rereads it.
    """
    with sqlite3.connect(path) as db:
        (root,) = db.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
    raw = bytearray(path.read_bytes())
    header = (root - 1) * page_size
    assert raw[header] == 0x0D  # a table leaf page
    raw[header + 3 : header + 5] = cells.to_bytes(2, "big")
    raw[24:28] = (int.from_bytes(raw[24:28], "big") + 1).to_bytes(4, "big")
    path.write_bytes(bytes(raw))


def test_damage_to_sqlites_own_structure_is_the_stores_own_error(tmp_path, key):
    path = tmp_path / "device.db"
    with Device.open(path, key) as device:
        for t in range(3):
            device.record(t, timestamp=float(t))
        damage_page_header(path)  # while open
        for read in (device.interactions, device.status, device.store.verify):
            with pytest.raises(CorruptStoreError, match="the store file is damaged"):
                read()
    with pytest.raises(CorruptStoreError, match="malformed"):  # the open's quick_check
        EncryptedStore(path, key)


def test_verify_runs_the_full_integrity_check(tmp_path, key):
    """An index that no longer matches its table passes quick_check; verify() finds it."""
    path = tmp_path / "device.db"
    with Device.open(path, key) as device:
        device.store.put("abc", b"x")
    with sqlite3.connect(path) as db:
        (root,) = db.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_state_1'"
        ).fetchone()
    raw = bytearray(path.read_bytes())
    page = (root - 1) * 4096
    raw[page + raw[page : page + 4096].rfind(b"abc")] ^= 1
    path.write_bytes(bytes(raw))
    with EncryptedStore(path, key) as store:  # opens: the cheap check does not see it
        with pytest.raises(CorruptStoreError, match="missing from index sqlite_autoindex_state_1"):
            store.verify()


def test_forget_starts_a_damaged_file_again_under_the_same_device_id(tmp_path, key):
    path = tmp_path / "device.db"
    with _filled(path, key) as device:
        device_id = device.device_id
        damage_page_header(path)
        device.forget(device_id)
        assert device.interactions() == [] and device.store.names() == []
        assert device.record(5, timestamp=1.0) == 1
    with Device.open(path, key) as device:
        assert device.device_id == device_id and device.store.verify() == 1
    for item in ITEMS:  # the damaged file was overwritten, not just unlinked from the tree
        assert item.to_bytes(8, "little") not in path.read_bytes()


def test_delete_one_interaction(tmp_path, key):
    with Device.open(tmp_path / "device.db", key) as device:
        for t, item in enumerate([4, 9, 11]):
            device.record(item, timestamp=float(t))
        deleted = device.delete_interaction(2)
        assert (deleted.record_id, deleted.item) == (2, 9)
        assert [(i.record_id, i.item) for i in device.interactions()] == [(1, 4), (3, 11)]
        with pytest.raises(NoSuchRecordError, match="no interaction with record id 2"):
            device.delete_interaction(2)
        with pytest.raises(ValueError, match="record_id must be an integer"):
            device.delete_interaction("2")


def test_a_damaged_state_name_is_not_listed_as_another_state(tmp_path, key):
    """Found by the store's state machine (long profile): a flipped byte in a record's name
    listed 'unprotected-roundr' as a state; every name is now authenticated when listed."""
    path = tmp_path / "s.db"
    store = EncryptedStore(path, key)
    store.put("unprotected-rounds", b"3")
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE state SET name = 'unprotected-roundr'")
    with pytest.raises(TamperedError, match="state/unprotected-roundr"):
        EncryptedStore(path, key).names()


def test_a_header_whose_text_is_not_utf8_is_corruption(tmp_path, key):
    """Found by the same run: a flipped byte in the device id gave a raw UnicodeDecodeError."""
    path = tmp_path / "s.db"
    EncryptedStore(path, key).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = x'ff00ff' WHERE name = 'device-id'")
    with pytest.raises(CorruptStoreError, match="header is damaged"):
        EncryptedStore(path, key)
