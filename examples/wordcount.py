"""Count words on a local cluster of two processes with two workers each.

Run it with ``python examples/wordcount.py`` (or ``scripts/demo`` from a fresh clone).
"""

from __future__ import annotations

import re
from datetime import timedelta

from millrace.dataflow import Dataflow
from millrace.execution import PeriodicEpochConfig, spawn_cluster
from millrace.inputs import ManualInputConfig
from millrace.outputs import ManualOutputConfig
from millrace.window import SystemClockConfig, TumblingWindowConfig

TEXT = """\
Water from the millrace turns the wheel, and the wheel turns the stones.
The race runs fast when the river is high, and the miller grinds all night.
When the river is low the wheel is slow, and the miller waits for rain.
"""


def lines(worker_index: int, worker_count: int, resume_state: int | None):
    """Each worker reads every worker_count-th line, so nothing is read twice."""
    start = resume_state or 0
    for number, line in enumerate(TEXT.splitlines()):
        if number >= start and number % worker_count == worker_index:
            yield number + 1, line


def words(line: str) -> list[str]:
    return re.findall(r"[a-z']+", line.lower())


def to_console(worker_index: int, worker_count: int):
    return lambda key_count: print(f"{key_count[0]:>10} {key_count[1]}", flush=True)


flow = Dataflow()
flow.input("lines", ManualInputConfig(lines))
flow.flat_map(words)
flow.map(lambda word: (word, 1))
# One window longer than the run: every count is final when the input ends.
flow.reduce_window(
    "count",
    SystemClockConfig(),
    TumblingWindowConfig(length=timedelta(hours=1)),
    lambda total, one: total + one,
)
flow.filter(lambda key_count: key_count[1] >= 2)
flow.capture(ManualOutputConfig(to_console))


def main() -> None:
    spawn_cluster(
        flow,
        proc_count=2,
        worker_count_per_proc=2,
        epoch_config=PeriodicEpochConfig(timedelta(seconds=1)),
    )


if __name__ == "__main__":
    main()
