"""Turning an entry point's arguments into running workers."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..common import clock as clocks
from ..common.clock import SYSTEM_CLOCK, Clock
from ..common.epoch_config import EpochConfig, PeriodicEpochConfig, TestingEpochConfig
from ..recovery import RecoveryConfig
from . import telemetry
from .epochs import EpochPolicy, ItemEpochs, PeriodicEpochs
from .exchange import Exchange
from .metrics_server import serving
from .stores import Stores, stores_of
from .worker import check_flow, check_outputs

if TYPE_CHECKING:
    from ..dataflow import Dataflow


def epoch_policy(epoch_config: EpochConfig | None, clock: Clock = SYSTEM_CLOCK) -> EpochPolicy:
    """The policy of ``epoch_config``; a periodic one measures its epochs on ``clock``."""
    if epoch_config is None:
        return PeriodicEpochs(PeriodicEpochConfig().epoch_length, clock.monotonic)
    if isinstance(epoch_config, TestingEpochConfig):
        return ItemEpochs()
    if isinstance(epoch_config, PeriodicEpochConfig):
        return PeriodicEpochs(epoch_config.epoch_length, clock.monotonic)
    raise TypeError(f"epoch_config must be a PeriodicEpochConfig or TestingEpochConfig, got {epoch_config!r}")


def check_recovery(recovery_config: Any, flow: Dataflow | None = None) -> Stores | None:
    """The recovery stores of ``recovery_config`` (``None``: no recovery); nothing is opened.
    With ``flow``, its outputs that need recovery are checked against it."""
    stores = stores_of(recovery_config)
    if flow is not None:
        check_outputs(flow, stores is not None)
    return stores


def run_single(
    flow: Dataflow,
    *,
    epoch_config: EpochConfig | None,
    recovery_config: RecoveryConfig | None,
    clock: Clock | None = None,
    metrics_port: int | None = None,
) -> None:
    """Run ``flow`` on one worker in this thread; its epochs and windows read ``clock``
    (default: the clock installed now, :func:`millrace.common.clock.current`). With
    ``metrics_port``, ``/metrics`` is served there while it runs."""
    check_flow(flow)
    clock = clock if clock is not None else clocks.current()
    policy = epoch_policy(epoch_config, clock)
    stores = check_recovery(recovery_config, flow)
    flow_start: datetime = clock.now()
    installed = telemetry.current()
    attributes = {"millrace.proc_count": 1, "millrace.worker.count": 1}
    with serving(metrics_port) as metrics, telemetry.run_span("millrace.run", attributes) as parent:
        exchange = Exchange(1)
        if metrics is not None:
            metrics.start_run(0, exchange)
        worker = telemetry.new_worker(installed, parent, flow, 0, exchange, policy, flow_start, stores, clock, metrics)
        worker.run()
