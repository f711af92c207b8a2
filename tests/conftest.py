"""Shared fixtures: processes started by a test are always reaped, whatever happens."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SUPPORT = Path(__file__).parent / "support"


class Procs:
    """Starts helper processes in their own process group and kills what is left at the end."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.started: list[subprocess.Popen[str]] = []

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        full_env = {**os.environ, "MILLRACE_TEST_TAG": self.tag, **(env or {})}
        proc = subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
            start_new_session=True,
        )
        self.started.append(proc)
        return proc

    def leftovers(self) -> list[int]:
        """Pids of live processes that carry this test's tag (children included)."""
        found = []
        needle = f"MILLRACE_TEST_TAG={self.tag}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    status = (entry / "status").read_text()
                    if "\nState:\tZ" not in status:
                        found.append(int(entry.name))
            except OSError:
                continue
        return found

    def cleanup(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.communicate(timeout=10)
            except Exception:
                pass
        for pid in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def procs(request: pytest.FixtureRequest) -> Iterator[Procs]:
    tag = f"{os.getpid()}-{request.node.name}"
    tracker = Procs(tag)
    try:
        yield tracker
    finally:
        tracker.cleanup()


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[str]:
    """A Kafka-protocol broker (tansu, in memory) for the whole session, started when a test
    first asks for it; its bootstrap address ``127.0.0.1:PORT``. Tests use topics of their own."""
    from .support.kafka import tansu_broker

    with tansu_broker() as address:
        yield address
