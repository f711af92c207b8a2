"""Where a flow's recovery stores live: one store per worker, all of them in one place (a
directory of SQLite files, or a pair of Kafka topics).

:func:`.persistence.restore` asks a :class:`Stores` what every worker's store says
(:meth:`Stores.inspect`), which workers hold a snapshot (:meth:`Stores.snapshotted`), and opens
the worker's own (:meth:`Stores.open`); the store it gets does what
:class:`~.store.WorkerStore` does (load, rewind, snapshot, the two halves of a rescale). Both
kinds keep the same guarantees: a snapshot is all-or-nothing, and a rescale stopped half-way
leaves every store either as it was or with its new content staged beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from ..recovery import KafkaRecoveryConfig, RecoveryConfig, SqliteRecoveryConfig
from . import store
from .errors import describe


class WorkerStoreLike(Protocol):
    """A worker's own store, open for writing (see :class:`~.store.WorkerStore`)."""

    @property
    def where(self) -> str: ...

    def close(self) -> None: ...

    def load(self, resume_epoch: int) -> tuple[dict[str, Any], dict[str, dict[Any, Any]]]: ...

    def rewind(self, resume_epoch: int) -> None: ...

    def snapshot(self, epoch: int, inputs: dict[str, Any], chunks: dict[str, store.Chunk]) -> int:
        """Record the end of ``epoch``; return the size of the state written, in bytes."""
        ...

    def rescale(
        self, worker_count: int, epoch: int, inputs: dict[str, Any], keyed: dict[str, dict[Any, Any]]
    ) -> None: ...

    def stage_rescale(
        self, worker_count: int, epoch: int, inputs: dict[str, Any], keyed: dict[str, dict[Any, Any]]
    ) -> None: ...

    def commit_rescale(self) -> None: ...

    def drop_rescale(self) -> None: ...


class Stores(Protocol):
    """The stores of every worker of a flow."""

    #: Where they are, for messages: a directory, or topics on brokers.
    where: str

    def check(self) -> None:
        """Raise :class:`~.store.RecoveryError` when the place cannot hold stores."""

    def inspect(self, worker_index: int) -> store.StoreInfo | None:
        """What worker ``worker_index``'s store says; ``None`` when it has none."""

    def left_empty(self, worker_index: int) -> bool:
        """Whether worker ``worker_index``'s store was begun and holds nothing at all (its
        worker was stopped while creating it), where :meth:`inspect` says ``None``."""

    def snapshotted(self) -> list[int]:
        """The workers whose stores hold a snapshot."""

    def store_name(self, worker_index: int) -> str:
        """Worker ``worker_index``'s store, for messages."""

    def open(
        self,
        worker_index: int,
        worker_count: int,
        step_ids: Sequence[str],
        flow_start: datetime,
        run: str | None = None,
    ) -> WorkerStoreLike:
        """Worker ``worker_index``'s store, made if it has none, for writing; it records
        ``run`` as the run it belongs to (see :mod:`.resume`)."""


class SqliteStores:
    """One SQLite file per worker in ``db_dir`` (:mod:`.store`)."""

    def __init__(self, db_dir: Path) -> None:
        self.db_dir = db_dir
        self.where = f"recovery directory {db_dir}"

    def check(self) -> None:
        store.check_dir(self.db_dir)

    def inspect(self, worker_index: int) -> store.StoreInfo | None:
        return store.inspect(self.db_dir, worker_index)

    def left_empty(self, worker_index: int) -> bool:
        # SQLite writes the file before it commits the schema: a kill in between leaves it.
        return store.store_path(self.db_dir, worker_index).exists() and self.inspect(worker_index) is None

    def snapshotted(self) -> list[int]:
        numbers = {path.stem.split("-", 1)[1] for path in self.db_dir.glob("worker-*.sqlite3")}
        workers = sorted(int(number) for number in numbers if number.isdigit())
        found = []
        for worker in workers:
            info = self.inspect(worker)
            if info is not None and info.progress is not None and info.progress >= 0:
                found.append(worker)
        return found

    def store_name(self, worker_index: int) -> str:
        return store.store_path(self.db_dir, worker_index).name

    def open(
        self,
        worker_index: int,
        worker_count: int,
        step_ids: Sequence[str],
        flow_start: datetime,
        run: str | None = None,
    ) -> store.WorkerStore:
        return store.WorkerStore(self.db_dir, worker_index, worker_count, step_ids, flow_start, run)


def stores_of(recovery_config: Any) -> Stores | None:
    """The stores ``recovery_config`` describes (``None``: no recovery); nothing is opened."""
    if recovery_config is None:
        return None
    if not isinstance(recovery_config, RecoveryConfig):
        raise TypeError(f"recovery_config must be a RecoveryConfig, got {describe(recovery_config)}")
    if isinstance(recovery_config, SqliteRecoveryConfig):
        return SqliteStores(recovery_config.db_dir)
    if isinstance(recovery_config, KafkaRecoveryConfig):
        # Imported here: only a flow recovering from Kafka needs the client (millrace[kafka]).
        from .kafka_store import KafkaStores

        return KafkaStores(recovery_config)
    raise TypeError(f"unsupported recovery configuration {describe(recovery_config)}")
