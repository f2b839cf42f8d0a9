"""The on-device store: SQLite, every record encrypted with AES-256-GCM (``cryptography``).

What is on disk, and why:

- ``meta``: the format, a random device id and a random generation (plaintext, not secret),
  and a key check (an encrypted constant) that tells a wrong key apart from tampering.
- ``interactions``: one row per interaction, ``(id, nonce, ciphertext)``. The plaintext is a
  fixed-size struct (item, timestamp, rating), so not even the ciphertext length depends on the
  item id. No item id is stored in the clear anywhere.
- ``state``: named blobs (private embedding, accountant, latest global model, ...), encrypted the
  same way.

Each record has its own random 96-bit nonce, and its associated data binds it to this store's
device id and generation, its table and its record id (or name): a flipped bit, or a record
copied to another id, name or device, fails authentication with :class:`TamperedError`. The key
(32 bytes) comes from the host app on every open; it is never written here.

Structural damage to the SQLite file itself (a flipped byte in a page header, not inside a
record) surfaces as :class:`CorruptStoreError`: the file is opened with ``cell_size_check`` and a
``quick_check`` (cheap at a device's size), every SQLite error later is mapped to it too, and
:meth:`EncryptedStore.verify` runs the full ``integrity_check`` and authenticates every record.

Messages never name the file's path: they may travel to any local client of the device agent.

Not detected: deleting whole records, or rolling the whole file back to an older copy (that
needs a trusted counter outside the file). :meth:`EncryptedStore.forget` starts a new generation,
so records from before it never authenticate again, even if copied back.
"""

from __future__ import annotations

import math
import os
import secrets
import sqlite3
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT = b"confide-store/1"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96 bits, the GCM standard nonce
_KEY_CHECK = b"confide key check"
_INTERACTION = struct.Struct("<qdd")  # item, timestamp, rating (NaN: none)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS interactions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, nonce BLOB NOT NULL, ciphertext BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS state (
    name TEXT PRIMARY KEY, nonce BLOB NOT NULL, ciphertext BLOB NOT NULL);
"""


def _check_aad(device_id: str) -> bytes:
    return b"|".join([FORMAT, device_id.encode(), b"key-check"])


RESTORE = "restore the store from a backup, or start over with Forget (Device.forget in Python)"


class StoreError(Exception):
    """The store cannot be opened or read."""


class WrongKeyError(StoreError):
    """The key does not open this store."""


class TamperedError(StoreError):
    """A record failed authentication: altered, or moved from another record or device."""


class CorruptStoreError(TamperedError):
    """SQLite's own structure in the file is damaged: nothing read from it can be trusted."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the store file is damaged ({detail}): {RESTORE}")
        self.detail = detail  # what SQLite said


class NoSuchRecordError(StoreError, LookupError):
    """The interaction asked for is not in the store."""


@contextmanager
def _sqlite_errors() -> Iterator[None]:
    """SQLite's errors (``database disk image is malformed`` ...) as the store's own."""
    try:
        yield
    except sqlite3.DatabaseError as err:
        raise CorruptStoreError(f"SQLite: {err}") from None
    except UnicodeDecodeError:  # a TEXT value that is not UTF-8: only a damaged file has one
        raise CorruptStoreError("SQLite: a text value is not valid UTF-8") from None


@dataclass(frozen=True)
class Interaction:
    record_id: int
    item: int
    timestamp: float
    rating: float | None


class EncryptedStore:
    """One device's encrypted SQLite file. Thread-safe (one connection behind a lock)."""

    def __init__(self, path: str | os.PathLike[str], key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
            raise ValueError(
                f"the store key must be {KEY_BYTES} random bytes (AES-256), got "
                f"{len(key) if isinstance(key, bytes | bytearray) else type(key).__name__}"
            )
        self.path = Path(path)
        self._aead = AESGCM(bytes(key))
        self._lock = threading.RLock()
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self._connect()
        with _sqlite_errors():
            self._check_structure("quick_check")
            self._open_meta()

    # -- lifecycle -------------------------------------------------------------------------
    def _connect(self) -> None:
        try:
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self._db.execute("PRAGMA secure_delete = ON")  # freed pages are zeroed
            self._db.execute("PRAGMA cell_size_check = ON")  # damaged pages: an error, not garbage
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path} is not a Confide store (SQLite said: {err})") from None
        except UnicodeDecodeError:  # the schema's own text is damaged
            raise CorruptStoreError("SQLite: the schema's text is not valid UTF-8") from None

    def _open_meta(self, device_id: str | None = None) -> None:
        """Read the header; an empty store gets one (``device_id``: keep that id, else new)."""
        meta = dict(self._db.execute("SELECT name, value FROM meta"))
        if not meta:
            device_id = device_id or secrets.token_hex(16)
            nonce = secrets.token_bytes(NONCE_BYTES)
            check = self._aead.encrypt(nonce, _KEY_CHECK, _check_aad(device_id))
            meta = {
                "format": FORMAT,
                "device-id": device_id.encode(),
                "generation": secrets.token_hex(16).encode(),
                "key-check": nonce + check,
            }
            with self._db:
                self._db.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))
        if meta.get("format") != FORMAT:
            raise StoreError(f"{self.path}: unknown store format {meta.get('format')!r}")
        try:
            self.device_id = bytes(meta["device-id"]).decode()
        except UnicodeDecodeError:
            raise CorruptStoreError("the store's header is damaged (its device id)") from None
        self._generation = bytes(meta["generation"])
        blob = bytes(meta["key-check"])
        try:
            self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _check_aad(self.device_id))
        except InvalidTag:
            raise WrongKeyError(
                "the key does not open this store: it is the wrong key, or the store's header "
                "was altered. Use the key this store was created with."
            ) from None

    def _check_structure(self, pragma: str) -> None:
        with self._lock:
            rows = [r[0] for r in self._db.execute(f"PRAGMA {pragma}")]
        if rows != ["ok"]:
            lines = "\n".join(map(str, rows)).splitlines()
            more = f" and {len(lines) - 3} more" if len(lines) > 3 else ""
            raise CorruptStoreError(f"SQLite {pragma}: {'; '.join(lines[:3])}{more}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> EncryptedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _sqlite_errors(), self._db:
            yield self._db

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _sqlite_errors():
            yield self._db

    # -- encryption ------------------------------------------------------------------------
    def _aad(self, table: str, record: str) -> bytes:
        return b"|".join(
            [FORMAT, self.device_id.encode(), self._generation, table.encode(), record.encode()]
        )

    def _seal(self, table: str, record: str, plain: bytes) -> tuple[bytes, bytes]:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce, self._aead.encrypt(nonce, plain, self._aad(table, record))

    def _open(self, table: str, record: str, nonce: bytes, ciphertext: bytes) -> bytes:
        if not isinstance(nonce, bytes) or not isinstance(ciphertext, bytes):
            # NULLs or numbers where only blobs are written: rows read from a damaged page
            raise CorruptStoreError(f"record {table}/{record} is not a stored record")
        try:
            return self._aead.decrypt(bytes(nonce), bytes(ciphertext), self._aad(table, record))
        except InvalidTag:
            raise TamperedError(
                f"record {table}/{record} of this store failed authentication: it was altered, "
                f"or moved here from another record or device. The store cannot be trusted: "
                f"{RESTORE}."
            ) from None

    # -- interactions ----------------------------------------------------------------------
    def add_interaction(self, item: int, timestamp: float, rating: float | None) -> int:
        plain = _INTERACTION.pack(item, timestamp, math.nan if rating is None else rating)
        with self._tx() as db:
            # Reserve the id first: the associated data must name the id the row will have.
            cursor = db.execute("INSERT INTO interactions (nonce, ciphertext) VALUES (x'', x'')")
            record_id = int(cursor.lastrowid)
            nonce, ciphertext = self._seal("interactions", str(record_id), plain)
            db.execute(
                "UPDATE interactions SET nonce = ?, ciphertext = ? WHERE id = ?",
                (nonce, ciphertext, record_id),
            )
        return record_id

    def interactions(self) -> list[Interaction]:
        with self._read() as db:
            rows = db.execute(
                "SELECT id, nonce, ciphertext FROM interactions ORDER BY id"
            ).fetchall()
        return [self._interaction(*row) for row in rows]

    def _interaction(self, record_id: int, nonce: bytes, ciphertext: bytes) -> Interaction:
        plain = self._open("interactions", str(record_id), nonce, ciphertext)
        if len(plain) != _INTERACTION.size:  # authenticated, so written by a different format
            raise TamperedError(f"record interactions/{record_id} has an unknown layout: {RESTORE}")
        item, timestamp, rating = _INTERACTION.unpack(plain)
        return Interaction(record_id, item, timestamp, None if math.isnan(rating) else rating)

    def count_interactions(self) -> int:
        """Rows, not authenticated: :meth:`interactions` is the count to trust."""
        with self._read() as db:
            return int(db.execute("SELECT COUNT(*) FROM interactions").fetchone()[0])

    def delete_interaction(self, record_id: int) -> Interaction:
        """Delete one interaction (authenticated first); returns what it was."""
        if not -(2**63) <= record_id < 2**63:  # SQLite's ids are 64-bit: none has this one
            raise NoSuchRecordError(f"no interaction with record id {record_id} on this device")
        with self._tx() as db:
            row = db.execute(
                "SELECT id, nonce, ciphertext FROM interactions WHERE id = ?", (record_id,)
            ).fetchone()
            if row is None:
                raise NoSuchRecordError(
                    f"no interaction with record id {record_id} on this device: list them to "
                    "see their ids"
                )
            deleted = self._interaction(*row)
            db.execute("DELETE FROM interactions WHERE id = ?", (record_id,))  # secure_delete
        return deleted

    # -- named state -----------------------------------------------------------------------
    def put(self, name: str, data: bytes) -> None:
        nonce, ciphertext = self._seal("state", name, data)
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO state VALUES (?, ?, ?)", (name, nonce, ciphertext))

    def get(self, name: str) -> bytes | None:
        with self._read() as db:
            row = db.execute(
                "SELECT nonce, ciphertext FROM state WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else self._open("state", name, *row)

    def delete(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM state WHERE name = ?", (name,))

    def names(self) -> list[str]:
        """The state records' names, each authenticated: a name is bound into its record's
        authentication, so a damaged name fails here instead of being listed as another state."""
        with self._read() as db:
            rows = db.execute("SELECT name, nonce, ciphertext FROM state ORDER BY name").fetchall()
        for name, nonce, ciphertext in rows:
            if not isinstance(name, str):
                raise CorruptStoreError(f"a state record's name is {type(name).__name__}")
            self._open("state", name, nonce, ciphertext)
        return [name for name, _, _ in rows]

    def verify(self) -> int:
        """SQLite's full ``integrity_check``, then authenticate every record.

        Returns how many records were checked; raises on the first damage found.
        """
        with _sqlite_errors():
            self._check_structure("integrity_check")
        count = len(self.interactions())
        for name in self.names():
            self.get(name)
            count += 1
        return count

    # -- forgetting ------------------------------------------------------------------------
    def forget(self) -> None:
        """Delete every interaction and every state record, and start a new generation.

        ``secure_delete`` zeroes the freed pages and VACUUM rebuilds the file without them, so
        no ciphertext of the old records remains in it; the id counter is reset too. A file whose
        SQLite structure is damaged cannot be emptied record by record: it is overwritten with
        zeros and started again, empty, under the same device id.
        """
        try:
            self._delete_everything()
        except CorruptStoreError:
            self._recreate()

    def _delete_everything(self) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM interactions")
            db.execute("DELETE FROM state")
            db.execute("DELETE FROM sqlite_sequence")
            self._generation = secrets.token_hex(16).encode()
            db.execute("UPDATE meta SET value = ? WHERE name = 'generation'", (self._generation,))
        with self._read() as db:
            db.execute("VACUUM")

    def _recreate(self) -> None:
        with self._lock:
            self._db.close()
            size = self.path.stat().st_size
            with open(self.path, "r+b") as file:
                file.write(bytes(size))
                file.flush()
                os.fsync(file.fileno())
                file.truncate(0)
            journal = self.path.with_name(self.path.name + "-journal")
            journal.unlink(missing_ok=True)  # a hot journal would roll the old pages back in
            self._connect()
            with _sqlite_errors():
                self._open_meta(self.device_id)
