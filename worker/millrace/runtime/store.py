"""Snapshots in SQLite: one file per worker, written once per epoch in one transaction.

A worker's file holds its input states and the state of every key it touched, each row
tagged with the epoch at whose end it was written (``NULL`` state: the key was forgotten),
plus the last epoch the worker finished. A step that holds no state at all at the end of an
epoch (every window closed at the end of input, say) is recorded by one ``cleared`` row
instead of a forgotten-row per key: it hides every older row of the step.

A row is dropped once the whole cluster has finished an epoch at or after a newer row of its
key (the row is *superseded*), so that the state as of any epoch a restart could resume from
is always there. A forgotten-row goes too once nothing older is left for it to hide: a key's
last write stays only while it holds state.

SQLite's transactions make a write all-or-nothing even when the process is killed mid-write.
"""

from __future__ import annotations

import json
import marshal
import pickle
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import cloudpickle

FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE progress (worker INTEGER PRIMARY KEY, epoch INTEGER NOT NULL);
CREATE TABLE inputs (
    step_id TEXT NOT NULL, epoch INTEGER NOT NULL, state BLOB,
    PRIMARY KEY (step_id, epoch)
);
CREATE TABLE state (
    step_id TEXT NOT NULL, key NOT NULL, epoch INTEGER NOT NULL, state BLOB,
    PRIMARY KEY (step_id, key, epoch)
) WITHOUT ROWID;
"""
# Added after format 1 was first written; created in older files when they are opened.
_CLEARED = "CREATE TABLE IF NOT EXISTS cleared (step_id TEXT NOT NULL, epoch INTEGER NOT NULL, PRIMARY KEY (step_id, epoch))"


def _table_order(row: tuple[Any, Any]) -> tuple[bool, Any]:
    key = row[0]
    return (type(key) is str, key)


class RecoveryError(RuntimeError):
    """The recovery store cannot be used; the message names the path and the problem."""


def store_path(db_dir: Path, worker_index: int) -> Path:
    return db_dir / f"worker-{worker_index}.sqlite3"


_MARSHALLED = b"M"


def dump_state(value: Any) -> bytes:
    """A state as bytes: marshalled when it holds only core types (several times faster than
    pickle, and it refuses anything else, subclasses included), pickled otherwise. Pickles
    start with ``0x80``, so the two never mix up."""
    try:
        return _MARSHALLED + marshal.dumps(value, 4)
    except ValueError:
        pass
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        # Closures and lambdas inside a state: cloudpickle writes what pickle.loads can read.
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def load_state(blob: bytes) -> Any:
    if blob[:1] == _MARSHALLED:
        return marshal.loads(blob[1:])
    return pickle.loads(blob)


@dataclass(frozen=True)
class StoreInfo:
    """What an existing worker file says about itself."""

    path: Path
    worker_count: int
    step_ids: tuple[str, ...]
    flow_start: datetime
    progress: int | None  # the last epoch this worker finished


def check_dir(db_dir: Path) -> None:
    if not db_dir.exists():
        raise RecoveryError(f"recovery directory {db_dir} does not exist; create it first")
    if not db_dir.is_dir():
        raise RecoveryError(f"recovery directory {db_dir} is not a directory")


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    uri = f"file:{path}?mode={'ro' if readonly else 'rwc'}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def inspect(db_dir: Path, worker_index: int) -> StoreInfo | None:
    """Read a worker file without changing it; ``None`` when there is none."""
    path = store_path(db_dir, worker_index)
    if not path.exists():
        return None
    try:
        conn = _connect(path, readonly=True)
        try:
            meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
            row = conn.execute(
                "SELECT epoch FROM progress WHERE worker = ?", (worker_index,)
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise RecoveryError(
            f"recovery store {path} is not a readable millrace store ({exc}); it was left as it is"
        ) from None
    try:
        version = int(meta["format"])
    except (KeyError, ValueError):
        raise RecoveryError(f"recovery store {path} has no millrace format marker") from None
    if version != FORMAT_VERSION:
        raise RecoveryError(
            f"recovery store {path} has format version {version}, but this millrace reads "
            f"version {FORMAT_VERSION}; it was left as it is"
        )
    try:
        return StoreInfo(
            path=path,
            worker_count=int(meta["worker_count"]),
            step_ids=tuple(json.loads(meta["step_ids"])),
            flow_start=datetime.fromisoformat(meta["flow_start"]),
            progress=None if row is None else int(row[0]),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise RecoveryError(f"recovery store {path} has damaged metadata ({exc!r})") from None


class WorkerStore:
    """A worker's own file, opened for writing after every check has passed."""

    def __init__(
        self,
        db_dir: Path,
        worker_index: int,
        worker_count: int,
        step_ids: Sequence[str],
        flow_start: datetime,
    ) -> None:
        self.path = store_path(db_dir, worker_index)
        self.worker_index = worker_index
        fresh = not self.path.exists()
        try:
            self.conn = _connect(self.path, readonly=False)
            self.conn.execute("PRAGMA journal_mode = WAL")
            # WAL with NORMAL sync survives a killed process; only a power loss can cost the
            # last committed epoch, which a restart then replays.
            self.conn.execute("PRAGMA synchronous = NORMAL")
            if fresh:
                self.conn.execute("BEGIN")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [
                        ("format", str(FORMAT_VERSION)),
                        ("worker_index", str(worker_index)),
                        ("worker_count", str(worker_count)),
                        ("step_ids", json.dumps(list(step_ids))),
                        ("flow_start", flow_start.isoformat()),
                    ],
                )
                self.conn.execute("COMMIT")
            self.conn.execute(_CLEARED)
        except sqlite3.DatabaseError as exc:
            raise RecoveryError(f"cannot write the recovery store {self.path}: {exc}") from None

    def close(self) -> None:
        self.conn.close()

    def load(self, resume_epoch: int) -> tuple[dict[str, Any], dict[str, dict[Any, Any]]]:
        """Input states and keyed states as of the end of epoch ``resume_epoch - 1``."""
        last = resume_epoch - 1
        inputs: dict[str, Any] = {}
        for step_id, blob in self.conn.execute(
            "SELECT step_id, state FROM inputs WHERE epoch = ?", (last,)
        ):
            inputs[step_id] = load_state(blob)
        keyed: dict[str, dict[Any, Any]] = {}
        rows = self.conn.execute(
            """
            SELECT s.step_id, s.key, s.state FROM state AS s
            WHERE s.epoch = (SELECT MAX(epoch) FROM state
                             WHERE step_id = s.step_id AND key = s.key AND epoch <= :last)
              AND s.epoch > COALESCE((SELECT MAX(epoch) FROM cleared
                                      WHERE step_id = s.step_id AND epoch <= :last), -1)
            """,
            {"last": last},
        )
        for step_id, key, blob in rows:
            if blob is not None:
                keyed.setdefault(step_id, {})[key] = load_state(blob)
        return inputs, keyed

    def rewind(self, resume_epoch: int) -> None:
        """Forget what this worker wrote for ``resume_epoch`` and later. A worker may finish
        an epoch that a peer had not when the cluster stopped; the restart runs that epoch
        again, and its second run need not touch the same keys, so rows of its first run
        would otherwise come back as the state of keys it never wrote."""
        with self._transaction() as conn:
            for table in ("state", "cleared", "inputs"):
                conn.execute(f"DELETE FROM {table} WHERE epoch >= ?", (resume_epoch,))
            conn.execute(
                "UPDATE progress SET epoch = ? WHERE worker = ? AND epoch >= ?",
                (resume_epoch - 1, self.worker_index, resume_epoch),
            )

    def snapshot(
        self,
        epoch: int,
        inputs: dict[str, Any],
        changes: dict[str, list[tuple[Any, bytes | None]]],
        cleared: Iterable[str] = (),
    ) -> None:
        """Record the end of ``epoch`` in one transaction, and drop what the whole cluster no
        longer needs: it has finished ``epoch - 1`` (every worker writes its snapshot of an
        epoch before any worker starts the next), so no restart resumes before ``epoch``.

        ``cleared`` names the steps that hold no state at all now (their ``changes`` are
        left out).
        """
        with self._transaction() as conn:
            self._write_epoch(conn, epoch, inputs, changes)
            conn.executemany("INSERT OR REPLACE INTO cleared VALUES (?, ?)", [(step_id, epoch) for step_id in cleared])
            self._drop_superseded(conn, settled=epoch - 1)

    @staticmethod
    def _drop_superseded(conn: sqlite3.Connection, settled: int) -> None:
        """Drop the rows no restart can need once every worker has finished ``settled``."""
        params = {"settled": settled}
        # A row with a newer row of its key at or before ``settled``.
        conn.execute(
            "DELETE FROM state WHERE epoch < :settled AND EXISTS (SELECT 1 FROM state AS newer "
            "WHERE newer.step_id = state.step_id AND newer.key = state.key "
            "AND newer.epoch > state.epoch AND newer.epoch <= :settled)",
            params,
        )
        # A row older than a clear of its step at or before ``settled``.
        conn.execute(
            "DELETE FROM state WHERE EXISTS (SELECT 1 FROM cleared WHERE cleared.step_id = "
            "state.step_id AND cleared.epoch > state.epoch AND cleared.epoch <= :settled)",
            params,
        )
        # Nothing older is left for these to hide.
        conn.execute("DELETE FROM state WHERE state IS NULL AND epoch <= :settled", params)
        conn.execute("DELETE FROM cleared WHERE epoch <= :settled", params)
        conn.execute("DELETE FROM inputs WHERE epoch < :settled", params)

    def rescale(self, worker_count: int, epoch: int, inputs: dict[str, Any], keyed: dict[str, dict[Any, Any]]) -> None:
        """Rewrite this file for a cluster of ``worker_count`` workers: the keyed states this
        worker owns now and its input states, as of the end of ``epoch``, in one transaction."""
        changes: dict[str, list[tuple[Any, bytes | None]]] = {
            step_id: [(key, dump_state(state)) for key, state in states.items()]
            for step_id, states in keyed.items()
        }
        with self._transaction() as conn:
            conn.execute("DELETE FROM state")
            conn.execute("DELETE FROM inputs")
            conn.execute("DELETE FROM cleared")
            self._write_epoch(conn, epoch, inputs, changes)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('worker_count', ?)", (str(worker_count),))

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One all-or-nothing write: committed at the end, rolled back on any exception."""
        conn = self.conn
        try:
            conn.execute("BEGIN")
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _write_epoch(self, conn: sqlite3.Connection, epoch: int, inputs: dict[str, Any],
                     changes: dict[str, list[tuple[Any, bytes | None]]]) -> None:
        """The rows of the end of ``epoch``: input states, keyed states, this worker's progress."""
        conn.executemany(
            "INSERT OR REPLACE INTO inputs VALUES (?, ?, ?)",
            [(step_id, epoch, dump_state(state)) for step_id, state in inputs.items()],
        )
        for step_id, rows in changes.items():
            # In the table's key order (SQLite sorts integers before text): inserting in order
            # touches each B-tree page once, which is much faster than in hash order.
            rows = sorted(rows, key=_table_order)
            conn.executemany(
                "INSERT OR REPLACE INTO state VALUES (?, ?, ?, ?)",
                [(step_id, key, epoch, blob) for key, blob in rows],
            )
        conn.execute("INSERT OR REPLACE INTO progress VALUES (?, ?)", (self.worker_index, epoch))
