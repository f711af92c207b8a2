"""Whether a pod's process is in a formed cluster, as the kubelet's readiness probe asks it, and
what its flow's steps are, as the operator asks it.

The probe is an HTTP GET of ``/ready`` on ``$MILLRACE_HEALTH_PORT``: 200 while the process is in a
formed cluster, 503 otherwise. An HTTP probe is answered by a thread of this process; an exec
probe (``test -e FILE``) costs the node a container runtime exec every period in every pod, which
on a small node with a hundred pods is enough load to make probes time out (benchmarks/RESULTS.md,
"The operator at scale"). The file ``$MILLRACE_STATE_DIR/ready`` is still kept, for anyone
looking from inside the container.

``GET /steps`` on the same port answers the flow's steps, a JSON list, once the process has
loaded the flow (503 before): the operator reads process 0's into the Dataflow's
``status.steps``. Workers have no Kubernetes API access, so the operator asks them.

>>> import json, urllib.error, urllib.request
>>> readiness = Readiness(state_dir=None, port=0)
>>> url = f"http://127.0.0.1:{readiness.port}"
>>> try:
...     urllib.request.urlopen(f"{url}/ready")
... except urllib.error.HTTPError as refused:
...     print(refused.code)
503
>>> readiness.formed()
>>> urllib.request.urlopen(f"{url}/ready").status
200
>>> readiness.loaded(["lines", "map#1", "count"])
>>> json.load(urllib.request.urlopen(f"{url}/steps"))
['lines', 'map#1', 'count']
>>> readiness.close()
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

READY_FILE = "ready"
READY_PATH = "/ready"
STEPS_PATH = "/steps"


class Readiness:
    """Ready exactly while this process is in a formed cluster: the file ``ready`` in
    ``state_dir`` and, when ``port`` is not ``None``, ``GET /ready`` on that port (0: any free
    one, see :attr:`port`), which also answers ``GET /steps`` once :meth:`loaded` said them."""

    def __init__(self, state_dir: Path | None, port: int | None) -> None:
        self.path = state_dir / READY_FILE if state_dir else None
        self._ready = threading.Event()
        self._steps: list[bytes] = []  # the JSON body of /steps, once known
        self._server: ThreadingHTTPServer | None = None
        self.clear()  # an emptyDir outlives the container: a restarted one starts unready
        if port is not None:
            self._server = _serve(port, self._ready, self._steps)

    @property
    def port(self) -> int | None:
        """The port ``/ready`` is served on, if it is."""
        return self._server.server_address[1] if self._server else None

    def loaded(self, steps: Sequence[str]) -> None:
        """The flow is loaded: ``/steps`` answers ``steps`` from now on."""
        self._steps[:] = [json.dumps(list(steps)).encode()]

    def formed(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("ready\n")
        self._ready.set()

    def clear(self) -> None:
        self._ready.clear()
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def close(self) -> None:
        self.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _serve(port: int, ready: threading.Event, steps: list[bytes]) -> ThreadingHTTPServer:
    class Probe(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == READY_PATH:
                status, body = (200, b"ready\n") if ready.is_set() else (503, b"not in a formed cluster\n")
                self._answer(status, "text/plain", body)
            elif self.path == STEPS_PATH:
                known = list(steps)
                if known:
                    self._answer(200, "application/json", known[0])
                else:
                    self._answer(503, "text/plain", b"the flow is not loaded yet\n")
            else:
                self.send_error(404, f"only {READY_PATH} and {STEPS_PATH} are served here")

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # one request every probe period: not worth a log line

    server = ThreadingHTTPServer(("", port), Probe)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="millrace-readiness", daemon=True).start()
    return server
