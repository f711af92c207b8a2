"""Recovery configurations: where a flow's snapshots live so a restart can resume.

Without a recovery configuration nothing is stored and a restart begins from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .common.fields import set_field

__all__ = ["RecoveryConfig", "SqliteRecoveryConfig", "KafkaRecoveryConfig"]


@dataclass(frozen=True)
class RecoveryConfig:
    """Base class of recovery configurations (frozen dataclasses, like every configuration)."""


@dataclass(frozen=True)
class SqliteRecoveryConfig(RecoveryConfig):
    """Keep snapshots in SQLite files inside the directory ``db_dir``.

    >>> SqliteRecoveryConfig("/tmp/flow-state")
    SqliteRecoveryConfig('/tmp/flow-state')
    """

    db_dir: Path

    # Written out, not generated: the argument may be a str, and a generated __init__ would
    # declare it a Path like the field (which always holds one).
    def __init__(self, db_dir: str | Path) -> None:
        if not isinstance(db_dir, (str, Path)):
            raise TypeError(f"SqliteRecoveryConfig needs a directory path, got {db_dir!r}")
        set_field(self, "db_dir", Path(db_dir))

    def __repr__(self) -> str:
        return f"SqliteRecoveryConfig({str(self.db_dir)!r})"


@dataclass(frozen=True)
class KafkaRecoveryConfig(RecoveryConfig):
    """Keep snapshots in two Kafka topics, ``{topic_prefix}-progress`` and
    ``{topic_prefix}-state``, made (compacted, one partition) when missing.

    It keeps what :class:`SqliteRecoveryConfig` keeps, with the same guarantees: a restart
    resumes at the epoch every worker completed, a run after a finished one continues from
    where it ended, a store of another flow is refused, and a cluster may resume with more
    workers. Every worker reads both topics when it starts. Needs the ``millrace[kafka]`` extra.

    ``additional_properties`` (beyond Bytewax 0.15) go to the store's clients, as those of
    :class:`~millrace.inputs.KafkaInputConfig` do: a broker that takes only SASL or TLS
    connections can hold the recovery topics too. Properties the store's guarantees rest on
    (idempotent writes acknowledged by every in-sync replica, no auto-created topics) cannot be
    overridden.

    >>> KafkaRecoveryConfig(["localhost:9092"], "clicks-recovery")
    KafkaRecoveryConfig(brokers=['localhost:9092'], topic_prefix='clicks-recovery')
    >>> KafkaRecoveryConfig(["localhost:9093"], "r", {"security.protocol": "SSL"}).additional_properties
    {'security.protocol': 'SSL'}
    """

    brokers: list[str]
    topic_prefix: str
    additional_properties: dict[str, str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Copies, so that changing the caller's list or dict later does not change the flow.
        set_field(self, "brokers", list(self.brokers))
        set_field(self, "additional_properties", dict(self.additional_properties or {}))
