"""The progress line of ``millrace run``: items in, items per second, the latest epoch.

The processes of a run report to the command over UDP on the loopback: :func:`instrument`
puts an ``inspect_epoch`` step holding a :class:`Counter` after every input of a copy of the
flow; the counter travels with the flow to every process and sends its process' total at most
every half second. :class:`ProgressLine` sums the latest totals and redraws one line on a
terminal. A report lost on the way only delays the line, which is all it shows; the flow never
waits for it. The counter costs one call per item, so ``millrace run`` adds it only when its
stderr is a terminal that shows the line.

>>> from millrace.dataflow import Dataflow
>>> from millrace.inputs import TestingInputConfig
>>> from millrace.outputs import TestingOutputConfig
>>> flow = Dataflow()
>>> flow.input("inp", TestingInputConfig(range(3)))
>>> flow.capture(TestingOutputConfig([]))
>>> with Counter(port=9) as counter:
...     counted = instrument(flow, counter)
>>> [step.name for step in counted.steps]
["input 'inp'", "inspect_epoch #0 (the progress line's counter)", 'capture #1 (TestingOutputConfig)']
>>> [step.name for step in flow.steps]  # the flow itself is left as it was
["input 'inp'", 'capture #1 (TestingOutputConfig)']
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from typing import IO, Any, Self

from .. import plan
from ..dataflow import Dataflow

#: How often a process reports its total, and the line is redrawn (seconds).
INTERVAL = 0.5
_HOST = "127.0.0.1"


class Counter:
    """Counts the items of one process and reports ``pid total epoch`` to ``port``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._start()

    def _start(self) -> None:
        self._count = itertools.count(1)  # next() is atomic: the workers of a process share it
        self._epoch = -1
        self._sent_at = 0.0
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.setblocking(False)

    def __getstate__(self) -> dict[str, Any]:
        return {"port": self.port}  # each process counts afresh, on its own socket

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.port = state["port"]
        self._start()

    def __call__(self, epoch: int, item: object) -> None:
        total = next(self._count)
        if epoch > self._epoch:
            self._epoch = epoch
        now = time.monotonic()
        if now - self._sent_at >= INTERVAL:
            self._sent_at = now
            try:
                self._socket.sendto(f"{os.getpid()} {total} {self._epoch}".encode(), (_HOST, self.port))
            except OSError:
                pass  # the line is a courtesy: a full buffer must not stop the flow

    def __repr__(self) -> str:
        return "the progress line's counter"  # the step's name, were it ever in an error

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def instrument(flow: Dataflow, counter: Counter) -> Dataflow:
    """A copy of ``flow`` that calls ``counter`` on every item an input brings in. The steps
    keep their positions, so an error in one names it as in ``flow``."""
    counted = Dataflow()
    for step in flow.steps:
        counted.steps.append(step)
        if isinstance(step, plan.Input):
            counted.steps.append(plan.InspectEpoch(position=len(counted.steps) - 1, fn=counter))
    return counted


class ProgressLine:
    """Receives the counters' reports and redraws ``stream``'s last line with them."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((_HOST, 0))
        self._socket.settimeout(INTERVAL / 2)
        self.port: int = self._socket.getsockname()[1]
        self._totals: dict[int, int] = {}
        self._epoch = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="millrace-progress", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._socket.close()
        self.stream.write("\r\x1b[K")  # leave the terminal as it was, without the line
        self.stream.flush()

    def _receive(self) -> None:
        try:
            data = self._socket.recv(256)
        except (TimeoutError, OSError):
            return
        try:
            pid, total, epoch = (int(field) for field in data.split())
        except ValueError:
            return  # not a report of ours
        self._totals[pid] = max(total, self._totals.get(pid, 0))
        self._epoch = max(self._epoch, epoch)

    def _run(self) -> None:
        samples: list[tuple[float, int]] = [(time.monotonic(), 0)]
        drawn_at = 0.0
        while not self._stop.is_set():
            self._receive()
            now = time.monotonic()
            if now - drawn_at < INTERVAL:
                continue
            drawn_at = now
            total = sum(self._totals.values())
            samples = [s for s in samples if now - s[0] <= 3.0] + [(now, total)]
            (then, before) = samples[0]
            rate = (total - before) / (now - then) if now > then else 0.0
            epoch = "-" if self._epoch < 0 else str(self._epoch)
            self.stream.write(f"\r\x1b[Kmillrace: {total:,} items in, {rate:,.0f} items/s, epoch {epoch}")
            self.stream.flush()
