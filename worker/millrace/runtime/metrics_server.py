"""Serving a process's metrics: Prometheus text at ``http://HOST:PORT/metrics``.

Each process has its own registry (not prometheus_client's global one, so that tests and the
processes of ``spawn_cluster`` never share one): the standard ``process_`` and ``python_``
collectors, and the engine's :class:`~.metrics.ProcessMetrics`. prometheus_client is imported
only here, once a port is given: a run without metrics does not load it.

>>> import urllib.request
>>> server = MetricsServer(0)
>>> text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics").read().decode()
>>> server.close()
>>> "process_cpu_seconds_total" in text, "# TYPE millrace_step_items_in_total counter" in text
(True, True)
"""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..common.errors import MetricsServerError

if TYPE_CHECKING:
    from .metrics import ProcessMetrics

__all__ = ["MetricsServer", "check_port", "serving"]

#: The interface the server listens on: every one, so that Prometheus can scrape a pod.
HOST = "0.0.0.0"


def check_port(port: object, name: str = "metrics_port", count: int = 1) -> int:
    """``port`` if it is a port number (``count`` ports from it are, for ``spawn_cluster``'s
    processes); a :class:`ValueError` naming ``name`` otherwise.

    >>> check_port(65536)
    Traceback (most recent call last):
    ...
    ValueError: metrics_port must be a port number (1-65535), got 65536
    """
    if type(port) is not int or not 1 <= port <= 65535:
        raise ValueError(f"{name} must be a port number (1-65535), got {port!r}")
    if port + count - 1 > 65535:
        raise ValueError(f"{name} {port} leaves no room for {count} processes (each takes the next port)")
    return port


class MetricsServer:
    """``/metrics`` of this process on ``port`` (0: any free one, see :attr:`port`), served by a
    thread until :meth:`close`. :attr:`metrics` is what the engine's runs report to."""

    def __init__(self, port: int) -> None:
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        from prometheus_client import GCCollector, PlatformCollector, ProcessCollector, make_wsgi_app
        from prometheus_client.exposition import ThreadingWSGIServer
        from prometheus_client.registry import CollectorRegistry

        from .metrics import ProcessMetrics

        class Quiet(WSGIRequestHandler):
            """Logs nothing: a scrape every few seconds is not news."""

            def log_message(self, format: str, *args: Any) -> None:
                pass

        registry = CollectorRegistry(auto_describe=False)
        # The standard collectors, in this registry instead of the global one.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.metrics: ProcessMetrics = ProcessMetrics()
        registry.register(self.metrics)
        try:
            self._server = make_server(HOST, port, make_wsgi_app(registry), ThreadingWSGIServer, Quiet)
        except OSError as exc:
            error = MetricsServerError(
                f"cannot serve metrics on port {port}: {exc.strerror or exc}; is another process "
                "serving there? Give another port (metrics_port=, --metrics-port or MILLRACE_METRICS_PORT)"
            )
            error.errno = exc.errno
            raise error from None
        # Not serve_forever(): its shutdown() waits up to half a second for its next poll, which
        # a short run would pay in full. This loop wakes at once on a byte from close().
        self._wake = socket.socketpair()
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name=f"millrace-metrics-{self.port}", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        address: Any = self._server.server_address
        return int(address[1])

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._server, selectors.EVENT_READ)
            selector.register(self._wake[0], selectors.EVENT_READ)
            while not self._closing:
                for key, _ in selector.select():
                    if key.fileobj is self._server and not self._closing:
                        # Readable: a connection waits, so this accepts it without blocking
                        # and hands it to a thread of its own (ThreadingWSGIServer).
                        self._server.handle_request()

    def close(self) -> None:
        self._closing = True
        self._wake[1].send(b"x")
        self._thread.join(5.0)
        self._server.server_close()
        for end in self._wake:
            end.close()


@contextmanager
def serving(port: int | None) -> Iterator[ProcessMetrics | None]:
    """This process's :class:`~.metrics.ProcessMetrics`, served on ``port`` for the block
    (``None``: no metrics, and the block gets ``None``)."""
    if port is None:
        yield None
        return
    server = MetricsServer(port)
    try:
        yield server.metrics
    finally:
        server.close()
