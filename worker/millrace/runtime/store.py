"""Snapshots in SQLite: one file per worker, written once per epoch in one transaction.

A worker's file holds its input states, one *chunk* per stateful step and epoch in which any
of the step's keys changed, and the last epoch the worker finished. A chunk is one blob: the
new state of every key that changed (as the step exports it) and the keys it forgot. A *full*
chunk holds every key the step holds instead, so a step's state as of epoch ``e`` is its
newest full chunk up to ``e`` with the later chunks up to ``e`` applied in order. The worker
writes a full chunk when the chunks since the last one add up to more keys than the step
holds, which keeps replaying them bounded by the state's size; a step left without any state
(every window closed at the end of input) is an empty full chunk.

Once the whole cluster has finished an epoch, everything older than each step's newest full
chunk up to that epoch can go: no restart resumes before it.

One blob per step and epoch, not one row per key: a snapshot of 10,000 changed keys costs a
few milliseconds instead of a hundred (format 1 wrote a row per key; such files are rewritten
in this format when opened).

SQLite's transactions make a write all-or-nothing even when the process is killed mid-write.
A grown cluster rewrites every worker's file in two halves (:meth:`WorkerStore.stage_rescale`,
then :meth:`WorkerStore.commit_rescale` once every worker has staged), so that a start stopped
in between leaves each file either as it was or with its new content beside it.
"""

from __future__ import annotations

import json
import marshal
import pickle
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import cloudpickle

FORMAT_VERSION = 2
#: Format 1 (a row per key and epoch) is read once, and rewritten as format 2.
READABLE_VERSIONS = (1, 2)

_CHUNKS = """
CREATE TABLE chunks (
    step_id TEXT NOT NULL, epoch INTEGER NOT NULL, full INTEGER NOT NULL, state BLOB NOT NULL,
    PRIMARY KEY (step_id, epoch)
)"""
_SCHEMA = f"""
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE progress (worker INTEGER PRIMARY KEY, epoch INTEGER NOT NULL);
CREATE TABLE inputs (
    step_id TEXT NOT NULL, epoch INTEGER NOT NULL, state BLOB,
    PRIMARY KEY (step_id, epoch)
);
{_CHUNKS};
"""


# The first half of a rescale: a worker's store for the new cluster, written beside the one a
# restart reads until the second half swaps them (meta ``staged_count`` and ``staged_epoch``
# say for which count and as of which epoch).
_STAGED = """
CREATE TABLE IF NOT EXISTS staged_inputs (
    step_id TEXT NOT NULL, epoch INTEGER NOT NULL, state BLOB,
    PRIMARY KEY (step_id, epoch)
);
CREATE TABLE IF NOT EXISTS staged_chunks (
    step_id TEXT NOT NULL, epoch INTEGER NOT NULL, full INTEGER NOT NULL, state BLOB NOT NULL,
    PRIMARY KEY (step_id, epoch)
);
"""


@dataclass(frozen=True)
class Chunk:
    """What one step's keys did in one epoch: the new states of those that changed (as the
    step exports them) and the keys it forgot. ``full``: ``changed`` is every key the step
    holds, and nothing older is needed."""

    changed: dict[Any, Any]
    forgotten: list[Any]
    full: bool


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
        pickled: bytes = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        return pickled


def load_state(blob: bytes) -> Any:
    if blob[:1] == _MARSHALLED:
        return marshal.loads(blob[1:])
    return pickle.loads(blob)


@dataclass(frozen=True)
class StoreInfo:
    """What an existing worker file says about itself."""

    #: The file; or, for a store that is not a file, a description of where it is.
    path: Path | str
    worker_count: int
    step_ids: tuple[str, ...]
    flow_start: datetime
    progress: int | None  # the last epoch this worker finished
    #: A rescale's first half, written and not yet swapped in: (worker count, as of epoch).
    staged: tuple[int, int] | None = None
    #: The run it belongs to (:mod:`.resume`); ``None`` in a store of an older millrace.
    run: str | None = None


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


def _is_empty(conn: sqlite3.Connection) -> bool:
    """Whether a database has no tables at all, as a file a process was killed while
    creating is left (SQLite writes the file before the schema is committed)."""
    tables: int = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
    return tables == 0


def inspect(db_dir: Path, worker_index: int) -> StoreInfo | None:
    """Read a worker file without changing it; ``None`` when there is none (or only an
    empty one)."""
    path = store_path(db_dir, worker_index)
    if not path.exists():
        return None
    try:
        conn = _connect(path, readonly=True)
        try:
            if _is_empty(conn):
                return None  # its worker was stopped while creating it: nothing was written
            meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
            row = conn.execute("SELECT epoch FROM progress WHERE worker = ?", (worker_index,)).fetchone()
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
    if version not in READABLE_VERSIONS:
        raise RecoveryError(
            f"recovery store {path} has format version {version}, but this millrace reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))}; it was left as it is"
        )
    try:
        return StoreInfo(
            path=path,
            worker_count=int(meta["worker_count"]),
            step_ids=tuple(json.loads(meta["step_ids"])),
            flow_start=datetime.fromisoformat(meta["flow_start"]),
            progress=None if row is None else int(row[0]),
            staged=(int(meta["staged_count"]), int(meta["staged_epoch"])) if "staged_count" in meta else None,
            run=meta.get("run"),
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
        run: str | None = None,
    ) -> None:
        self.path = store_path(db_dir, worker_index)
        self.worker_index = worker_index
        try:
            self.conn = _connect(self.path, readonly=False)
            fresh = _is_empty(self.conn)
            self.conn.execute("PRAGMA journal_mode = WAL")
            # WAL with NORMAL sync survives a killed process; only a power loss can cost the
            # last committed epoch, which a restart then replays.
            self.conn.execute("PRAGMA synchronous = NORMAL")
            if fresh:
                with self._transaction() as conn:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.executemany(
                        "INSERT INTO meta VALUES (?, ?)",
                        [
                            ("format", str(FORMAT_VERSION)),
                            ("worker_index", str(worker_index)),
                            ("worker_count", str(worker_count)),
                            ("step_ids", json.dumps(list(step_ids))),
                            ("flow_start", flow_start.isoformat()),
                        ],
                    )
            else:
                self._upgrade()
            if run is not None:
                # The run this store belongs to from now on: a store of no run, or one that held
                # no snapshot, joins it (resume refuses stores of two runs that hold one).
                self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('run', ?)", (run,))
        except sqlite3.DatabaseError as exc:
            raise RecoveryError(f"cannot write the recovery store {self.path}: {exc}") from None

    @property
    def where(self) -> str:
        """The file, for messages."""
        return str(self.path)

    def close(self) -> None:
        self.conn.close()

    def load(self, resume_epoch: int) -> tuple[dict[str, Any], dict[str, dict[Any, Any]]]:
        """Input states and keyed states as of the end of epoch ``resume_epoch - 1``."""
        last = resume_epoch - 1
        inputs: dict[str, Any] = {}
        for step_id, blob in self.conn.execute("SELECT step_id, state FROM inputs WHERE epoch = ?", (last,)):
            inputs[step_id] = load_state(blob)
        keyed: dict[str, dict[Any, Any]] = {}
        rows = self.conn.execute(
            """
            SELECT step_id, full, state FROM chunks AS c
            WHERE epoch <= :last
              AND epoch >= COALESCE((SELECT MAX(epoch) FROM chunks
                                     WHERE step_id = c.step_id AND full AND epoch <= :last), -1)
            ORDER BY step_id, epoch
            """,
            {"last": last},
        )
        for step_id, full, blob in rows:
            changed, forgotten = load_state(blob)
            if full:
                keyed[step_id] = changed
                continue
            states = keyed.setdefault(step_id, {})
            states.update(changed)
            for key in forgotten:
                states.pop(key, None)
        return inputs, {step_id: states for step_id, states in keyed.items() if states}

    def rewind(self, resume_epoch: int) -> None:
        """Forget what this worker wrote for ``resume_epoch`` and later. A worker may finish
        an epoch that a peer had not when the cluster stopped; the restart runs that epoch
        again, and its second run need not touch the same keys, so the chunks of its first
        run would otherwise come back on a later restart."""
        with self._transaction() as conn:
            for table in ("chunks", "inputs"):
                conn.execute(f"DELETE FROM {table} WHERE epoch >= ?", (resume_epoch,))
            conn.execute(
                "UPDATE progress SET epoch = ? WHERE worker = ? AND epoch >= ?",
                (resume_epoch - 1, self.worker_index, resume_epoch),
            )

    def snapshot(self, epoch: int, inputs: dict[str, Any], chunks: dict[str, Chunk]) -> int:
        """Record the end of ``epoch`` in one transaction, and drop what the whole cluster no
        longer needs: it has finished ``epoch - 1`` (every worker writes its snapshot of an
        epoch before any worker starts the next), so no restart resumes before ``epoch``.
        Returns the size of the state written, in bytes."""
        with self._transaction() as conn:
            size = self._write_epoch(conn, epoch, inputs, chunks)
            conn.execute(
                "DELETE FROM chunks WHERE epoch < (SELECT MAX(epoch) FROM chunks AS f "
                "WHERE f.step_id = chunks.step_id AND f.full AND f.epoch <= :settled)",
                {"settled": epoch - 1},
            )
            conn.execute("DELETE FROM inputs WHERE epoch < ?", (epoch - 1,))
        return size

    def rescale(self, worker_count: int, epoch: int, inputs: dict[str, Any], keyed: dict[str, dict[Any, Any]]) -> None:
        """Rewrite this file for a cluster of ``worker_count`` workers: the keyed states this
        worker owns now and its input states, as of the end of ``epoch``, in one transaction.
        (A cluster whose state moves between workers rewrites its stores in two halves,
        :meth:`stage_rescale` and :meth:`commit_rescale`.)"""
        self.stage_rescale(worker_count, epoch, inputs, keyed)
        self.commit_rescale()

    def stage_rescale(
        self, worker_count: int, epoch: int, inputs: dict[str, Any], keyed: dict[str, dict[Any, Any]]
    ) -> None:
        """Write what :meth:`rescale` writes beside this file's current content, which stays
        what a restart reads until :meth:`commit_rescale` (or :meth:`drop_rescale`)."""
        chunks = {step_id: Chunk(states, [], full=True) for step_id, states in keyed.items()}
        with self._transaction() as conn:
            for statement in _STAGED.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("DELETE FROM staged_inputs")
            conn.execute("DELETE FROM staged_chunks")
            conn.executemany("INSERT INTO staged_inputs VALUES (?, ?, ?)", _input_rows(epoch, inputs))
            conn.executemany("INSERT INTO staged_chunks VALUES (?, ?, ?, ?)", _chunk_rows(epoch, chunks))
            conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [("staged_count", str(worker_count)), ("staged_epoch", str(epoch))],
            )

    def commit_rescale(self) -> None:
        """Swap what :meth:`stage_rescale` wrote in for this file's content, in one
        transaction."""
        with self._transaction() as conn:
            meta = dict(conn.execute("SELECT name, value FROM meta WHERE name IN ('staged_count', 'staged_epoch')"))
            if len(meta) != 2:
                raise RecoveryError(f"recovery store {self.path} holds no staged rescale to commit")
            conn.execute("DELETE FROM chunks")
            conn.execute("DELETE FROM inputs")
            conn.execute("INSERT INTO chunks SELECT * FROM staged_chunks")
            conn.execute("INSERT INTO inputs SELECT * FROM staged_inputs")
            conn.execute(
                "INSERT OR REPLACE INTO progress VALUES (?, ?)", (self.worker_index, int(meta["staged_epoch"]))
            )
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('worker_count', ?)", (meta["staged_count"],))
            self._drop_staged(conn)

    def drop_rescale(self) -> None:
        """Forget a staged rescale; the file's content stays as it is."""
        with self._transaction() as conn:
            self._drop_staged(conn)

    @staticmethod
    def _drop_staged(conn: sqlite3.Connection) -> None:
        conn.execute("DROP TABLE IF EXISTS staged_inputs")
        conn.execute("DROP TABLE IF EXISTS staged_chunks")
        conn.execute("DELETE FROM meta WHERE name IN ('staged_count', 'staged_epoch')")

    def _upgrade(self) -> None:
        """Rewrite a format 1 file in this format: full chunks of its state as of the last
        two epochs it finished (a restart may resume after either), in one transaction."""
        (version,) = self.conn.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
        if int(version) == FORMAT_VERSION:
            return
        row = self.conn.execute("SELECT epoch FROM progress WHERE worker = ?", (self.worker_index,)).fetchone()
        has_cleared = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'cleared'"
        ).fetchone()
        with self._transaction() as conn:
            conn.execute(_CHUNKS)
            if row is not None:
                for last in sorted({row[0] - 1, row[0]} - {-1}):
                    keyed = _load_format_1(conn, last, bool(has_cleared))
                    step_ids = json.loads(conn.execute("SELECT value FROM meta WHERE name = 'step_ids'").fetchone()[0])
                    chunks = {step_id: Chunk(keyed.get(step_id, {}), [], full=True) for step_id in step_ids}
                    self._write_chunks(conn, last, chunks)
            conn.execute("DROP TABLE state")
            if has_cleared:
                conn.execute("DROP TABLE cleared")
            conn.execute("UPDATE meta SET value = ? WHERE name = 'format'", (str(FORMAT_VERSION),))

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

    def _write_epoch(
        self, conn: sqlite3.Connection, epoch: int, inputs: dict[str, Any], chunks: dict[str, Chunk]
    ) -> int:
        """The rows of the end of ``epoch``: input states, chunks, this worker's progress; returns
        the bytes of state they hold."""
        input_rows = _input_rows(epoch, inputs)
        conn.executemany("INSERT OR REPLACE INTO inputs VALUES (?, ?, ?)", input_rows)
        size = self._write_chunks(conn, epoch, chunks)
        conn.execute("INSERT OR REPLACE INTO progress VALUES (?, ?)", (self.worker_index, epoch))
        return size + sum(len(row[-1]) for row in input_rows)

    @staticmethod
    def _write_chunks(conn: sqlite3.Connection, epoch: int, chunks: dict[str, Chunk]) -> int:
        rows = _chunk_rows(epoch, chunks)
        conn.executemany("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?)", rows)
        return sum(len(row[-1]) for row in rows)


def _input_rows(epoch: int, inputs: dict[str, Any]) -> list[tuple[str, int, bytes]]:
    return [(step_id, epoch, dump_state(state)) for step_id, state in inputs.items()]


def _chunk_rows(epoch: int, chunks: dict[str, Chunk]) -> list[tuple[str, int, int, bytes]]:
    return [
        (step_id, epoch, int(chunk.full), dump_state((chunk.changed, chunk.forgotten)))
        for step_id, chunk in chunks.items()
    ]


def _load_format_1(conn: sqlite3.Connection, last: int, has_cleared: bool) -> dict[str, dict[Any, Any]]:
    """The keyed states as of the end of epoch ``last`` in a format 1 file: per key its newest
    row up to ``last``, unless a clear of its step is newer; a ``NULL`` row is a forgotten key."""
    cleared = (
        "AND s.epoch > COALESCE((SELECT MAX(epoch) FROM cleared WHERE step_id = s.step_id AND epoch <= :last), -1)"
        if has_cleared
        else ""
    )
    rows = conn.execute(
        f"""
        SELECT s.step_id, s.key, s.state FROM state AS s
        WHERE s.epoch = (SELECT MAX(epoch) FROM state
                         WHERE step_id = s.step_id AND key = s.key AND epoch <= :last)
          {cleared}
        """,
        {"last": last},
    )
    keyed: dict[str, dict[Any, Any]] = {}
    for step_id, key, blob in rows:
        if blob is not None:
            keyed.setdefault(step_id, {})[key] = load_state(blob)
    return keyed
