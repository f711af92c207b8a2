"""Recovery configurations: where a flow's snapshots live so a restart can resume.

Without a recovery configuration nothing is stored and a restart begins from scratch.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["RecoveryConfig", "SqliteRecoveryConfig", "KafkaRecoveryConfig"]


class RecoveryConfig:
    """Base class of recovery configurations."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SqliteRecoveryConfig(RecoveryConfig):
    """Keep snapshots in SQLite files inside the directory ``db_dir``.

    >>> SqliteRecoveryConfig("/tmp/flow-state")
    SqliteRecoveryConfig('/tmp/flow-state')
    """

    def __init__(self, db_dir: str | Path) -> None:
        if not isinstance(db_dir, (str, Path)):
            raise TypeError(f"SqliteRecoveryConfig needs a directory path, got {db_dir!r}")
        self.db_dir = Path(db_dir)

    def __repr__(self) -> str:
        return f"SqliteRecoveryConfig({str(self.db_dir)!r})"


class KafkaRecoveryConfig(RecoveryConfig):
    """Keep snapshots in Kafka topics.

    This build of millrace has no Kafka client; running a flow with it raises
    :class:`NotImplementedError` before anything is read or written.
    """

    def __init__(self, brokers: list[str], topic_prefix: str) -> None:
        self.brokers = list(brokers)
        self.topic_prefix = topic_prefix

    def __repr__(self) -> str:
        return f"KafkaRecoveryConfig(brokers={self.brokers!r}, topic_prefix={self.topic_prefix!r})"
