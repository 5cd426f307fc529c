"""The publisher's persisted state: one SQLite database, committed once per run.

SQLite gives the one property the commit protocol needs: a single atomic, durable commit point
(``synchronous=FULL``).  Everything written before the commit (RRDP files in a fresh random
directory, an rsync revision tree under a name nobody points to) is invisible to clients until
the commit has happened, and everything made visible after it (the ``current`` symlink, the
notification) is re-derived from the committed state at the start of every run.

Tables
  meta       key/value: schema version, session, serial, bases, bucket bits, snapshot location
  objects    one row per published object: relative path, sha256, size, rsync mtime, the source
             file's packed stat signature (quick check), and its snapshot bucket (indexed)
  buckets    byte spans of each bucket inside the current snapshot and its gzip sibling
  deltas     the deltas the notification lists (serial, path, hash, size, time made)
  changes    per-serial change log (path, new sha256 or NULL) to bring old rsync trees up to date
  slots      rsync revision trees: name, serial, when it stopped being current (NULL = current)
  retired    RRDP files no longer referenced, with the time they stopped being referenced
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

from rpkirepo.errors import Reason, StorageError

__all__ = [
    "SCHEMA_VERSION",
    "SIGNATURE",
    "BucketSpan",
    "DeltaRow",
    "ObjectRow",
    "SlotRow",
    "State",
]

SCHEMA_VERSION: Final = "2"

#: A source file's stat signature packed into one value: size, mtime_ns, ctime_ns, inode.
SIGNATURE: Final = struct.Struct("<qqqQ")

_SCHEMA: Final = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE objects (
    path TEXT PRIMARY KEY, sha256 BLOB NOT NULL, size INTEGER NOT NULL, mtime INTEGER NOT NULL,
    sig BLOB NOT NULL, bucket INTEGER NOT NULL
);
CREATE INDEX objects_bucket ON objects (bucket);
CREATE TABLE buckets (
    bucket INTEGER PRIMARY KEY, xml_off INTEGER NOT NULL, xml_len INTEGER NOT NULL,
    z_off INTEGER NOT NULL, z_len INTEGER NOT NULL
);
CREATE TABLE deltas (
    serial INTEGER PRIMARY KEY, path TEXT NOT NULL, sha256 BLOB NOT NULL, size INTEGER NOT NULL,
    made REAL NOT NULL
);
CREATE TABLE changes (
    serial INTEGER NOT NULL, path TEXT NOT NULL, sha256 BLOB, PRIMARY KEY (serial, path)
);
CREATE TABLE slots (name TEXT PRIMARY KEY, serial INTEGER NOT NULL, retired_at REAL);
CREATE TABLE retired (path TEXT PRIMARY KEY, retired_at REAL NOT NULL);
"""


class ObjectRow(NamedTuple):
    """One published object (a NamedTuple: 100k+ rows are loaded per run, cheaply)."""

    path: str
    sha256: bytes
    size: int
    mtime: int
    sig: bytes
    bucket: int


@dataclass(frozen=True, slots=True)
class BucketSpan:
    bucket: int
    xml_off: int
    xml_len: int
    z_off: int
    z_len: int


@dataclass(frozen=True, slots=True)
class DeltaRow:
    serial: int
    path: str
    sha256: bytes
    size: int
    made: float


@dataclass(frozen=True, slots=True)
class SlotRow:
    name: str
    serial: int
    retired_at: float | None


class State:
    """A handle on the state database.  Reads are free; writes happen inside :meth:`begin`."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    # --- opening -------------------------------------------------------------------------------

    @classmethod
    def open_existing(cls, path: Path) -> State:
        """Open and check an existing database; StorageError(STATE_*) when missing or corrupt."""
        if not path.exists():
            raise StorageError(Reason.STATE_MISSING, "no state yet", path=str(path))
        try:
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            # No quick_check here: it reads the whole database (O(repository)) on every run.
            # A damaged page raises DatabaseError when read, which starts a new session.
            version = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StorageError(Reason.STATE_CORRUPT, str(exc), path=str(path)) from exc
        if version is None or version[0] != SCHEMA_VERSION:
            conn.close()
            raise StorageError(Reason.STATE_INCOMPATIBLE, "unknown schema", path=str(path))
        return cls(conn, path)

    @classmethod
    def create(cls, path: Path) -> State:
        """A fresh, empty database at ``path`` (any old file is replaced)."""
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        try:
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
            conn.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        except sqlite3.DatabaseError as exc:
            raise StorageError(Reason.STORAGE_IO, str(exc), path=str(path)) from exc
        return cls(conn, path)

    def close(self) -> None:
        self._conn.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection, for set-wise SQL a caller runs inside :meth:`begin`."""
        return self._conn

    # --- transactions --------------------------------------------------------------------------

    def begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        """The run's single commit point."""
        try:
            self._conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise StorageError(
                Reason.STORAGE_IO, f"commit failed: {exc}", path=str(self.path)
            ) from exc

    def rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    # --- meta ----------------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set(self, key: str, value: str | int) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    # --- objects -------------------------------------------------------------------------------

    def objects(self) -> dict[str, ObjectRow]:
        """Every row (for a full rebuild only; a normal run uses :meth:`signatures`)."""
        rows = self._conn.execute("SELECT path, sha256, size, mtime, sig, bucket FROM objects")
        return {r[0]: r for r in map(ObjectRow._make, rows)}

    def signatures(self) -> dict[str, bytes]:
        """``{path: packed stat signature}``: all a run needs to find what changed."""
        return dict(self._conn.execute("SELECT path, sig FROM objects"))

    def rows(self, paths: Iterable[str]) -> dict[str, ObjectRow]:
        out: dict[str, ObjectRow] = {}
        for chunk in _chunks(list(paths)):
            marks = ",".join("?" * len(chunk))
            query = f"SELECT path, sha256, size, mtime, sig, bucket FROM objects WHERE path IN ({marks})"  # noqa: S608, E501 - only "?" placeholders are interpolated
            for r in self._conn.execute(query, chunk):
                out[r[0]] = ObjectRow._make(r)
        return out

    def paths_in_buckets(self, buckets: Iterable[int]) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for chunk in _chunks(list(buckets)):
            marks = ",".join("?" * len(chunk))
            out.extend(
                self._conn.execute(
                    f"SELECT path, bucket FROM objects WHERE bucket IN ({marks})",  # noqa: S608
                    chunk,
                )
            )
        return out

    def put_objects(self, rows: Iterable[ObjectRow]) -> None:
        self._conn.executemany("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?)", rows)

    def delete_objects(self, paths: Iterable[str]) -> None:
        self._conn.executemany("DELETE FROM objects WHERE path=?", ((p,) for p in paths))

    def update_stat(self, sigs: Iterable[tuple[str, bytes]]) -> None:
        """New stat signatures for files whose content did not change."""
        self._conn.executemany(
            "UPDATE objects SET sig=? WHERE path=?", ((sig, path) for path, sig in sigs)
        )

    # --- buckets -------------------------------------------------------------------------------

    def buckets(self) -> dict[int, BucketSpan]:
        rows = self._conn.execute("SELECT bucket, xml_off, xml_len, z_off, z_len FROM buckets")
        return {r[0]: BucketSpan(*r) for r in rows}

    def replace_buckets(self, spans: Iterable[BucketSpan]) -> None:
        self._conn.execute("DELETE FROM buckets")
        self._conn.executemany(
            "INSERT INTO buckets VALUES (?, ?, ?, ?, ?)",
            ((s.bucket, s.xml_off, s.xml_len, s.z_off, s.z_len) for s in spans),
        )

    # --- deltas --------------------------------------------------------------------------------

    def deltas(self) -> list[DeltaRow]:
        rows = self._conn.execute(
            "SELECT serial, path, sha256, size, made FROM deltas ORDER BY serial"
        )
        return [DeltaRow(*r) for r in rows]

    def add_delta(self, row: DeltaRow) -> None:
        self._conn.execute(
            "INSERT INTO deltas VALUES (?, ?, ?, ?, ?)",
            (row.serial, row.path, row.sha256, row.size, row.made),
        )

    def drop_delta(self, serial: int) -> None:
        self._conn.execute("DELETE FROM deltas WHERE serial=?", (serial,))

    # --- change log ----------------------------------------------------------------------------

    def log_changes(self, serial: int, changes: Iterable[tuple[str, bytes | None]]) -> None:
        self._conn.executemany(
            "INSERT OR REPLACE INTO changes VALUES (?, ?, ?)",
            ((serial, path, sha) for path, sha in changes),
        )

    def changes_after(self, serial: int) -> Iterator[tuple[int, str, bytes | None]]:
        """Changes with a serial above ``serial``, oldest first."""
        yield from self._conn.execute(
            "SELECT serial, path, sha256 FROM changes WHERE serial > ? ORDER BY serial", (serial,)
        )

    def prune_changes(self, up_to: int) -> None:
        self._conn.execute("DELETE FROM changes WHERE serial <= ?", (up_to,))

    # --- rsync slots ---------------------------------------------------------------------------

    def slots(self) -> list[SlotRow]:
        rows = self._conn.execute("SELECT name, serial, retired_at FROM slots ORDER BY serial")
        return [SlotRow(*r) for r in rows]

    def put_slot(self, row: SlotRow) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO slots VALUES (?, ?, ?)", (row.name, row.serial, row.retired_at)
        )

    def drop_slot(self, name: str) -> None:
        self._conn.execute("DELETE FROM slots WHERE name=?", (name,))

    # --- retired RRDP files --------------------------------------------------------------------

    def retired(self) -> dict[str, float]:
        return dict(self._conn.execute("SELECT path, retired_at FROM retired"))

    def retire(self, path: str, when: float, *, restart: bool = False) -> None:
        """``path`` stopped being referenced at ``when``; ``restart``: even if retired before."""
        verb = "REPLACE" if restart else "IGNORE"
        self._conn.execute(f"INSERT OR {verb} INTO retired VALUES (?, ?)", (path, when))  # noqa: S608

    def forget_retired(self, path: str) -> None:
        self._conn.execute("DELETE FROM retired WHERE path=?", (path,))


def _chunks(items: list[Any], size: int = 500) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
