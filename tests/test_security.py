"""Who may talk to a cluster, and who can read it: without a secret only the hosts of the
address list get in; with a secret and encryption the bytes on the wire are CURVE's, and only
a holder of the secret completes the handshake. Real cluster_main processes, real sockets; the
"other host" is a second loopback address, 127.0.0.2, which the outsider connects from."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from pathlib import Path

import pytest
import zmq

from millrace import pod
from millrace.dataflow import Dataflow
from millrace.execution import cluster_main
from millrace.outputs import TestingOutputConfig
from millrace.transport import frames
from millrace.transport.addresses import free_ports
from millrace.transport.security import Security, curve_keys

from .conftest import Procs
from .support import flows
from .test_cluster import _expected_sums, _read_outputs, _wait_running
from .test_replay import StderrLines, start

pytestmark = pytest.mark.timeout(180)


def _start(procs: Procs, addresses: list[str], proc_id: int, out: str, env: dict[str, str], count: int = 100):
    return start(procs, addresses, proc_id, out, count, 0.02, env)


def _finish_exactly(started: list, logs: list[StderrLines], out: str) -> list[str]:
    """Wait for the cluster; every process ends well with the exact output. Their stderr."""
    for proc in started:
        proc.wait(timeout=60)
    stderrs = [log.text() for log in logs]
    assert [proc.returncode for proc in started] == [0, 0], stderrs
    assert Counter(_read_outputs(out)) == _expected_sums(2, 100)
    return stderrs


class _Payload:
    """Unpickling it creates ``path``: the sign that bytes from the network ran code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_without_a_secret_a_host_outside_the_address_list_is_refused_and_nothing_of_it_is_read(procs, tmp_path):
    ports = free_ports(2)
    addresses = [f"127.0.0.1:{port}" for port in ports]
    out = str(tmp_path / "out")
    started = [_start(procs, addresses, proc_id, out, env={}) for proc_id in range(2)]
    logs = [StderrLines(proc) for proc in started]
    _wait_running(started, out)
    marker = tmp_path / "code-ran"
    import pickle

    evil = b"P" + pickle.dumps([(0, (_Payload(marker),))])
    hello = frames.hello_payload(1, 2, 1, "")
    ctx = zmq.Context()
    try:
        push = ctx.socket(zmq.PUSH)
        # From 127.0.0.2, a host that is not in the address list (ZeroMQ's source;destination form).
        push.connect(f"tcp://127.0.0.2:0;127.0.0.1:{ports[0]}")
        for seq in range(1, 4):
            push.send_multipart(frames.seal(None, frames.HELLO, 1, 0, seq, hello, b"x" * 8))
            push.send_multipart(frames.seal(None, frames.MESSAGE, 1, 0, seq, evil, b"x" * 8))
        logs[0].wait_for("refused a connection from 127.0.0.2", 1)
        push.close(linger=0)
    finally:
        ctx.term()
    stderrs = _finish_exactly(started, logs, out)
    assert "only the hosts of the address list (127.0.0.1) may connect" in stderrs[0]
    # Refused at the handshake: not one frame of it reached the process, let alone a decoder.
    assert "dropped a frame" not in stderrs[0]
    assert not marker.exists()


def test_cluster_main_without_a_secret_warns_that_only_its_hosts_may_connect(tmp_path):
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    with pytest.warns(
        RuntimeWarning, match=r"accepts connections only from the hosts of its address list \(127\.0\.0\.1\)"
    ):
        with pytest.raises(Exception, match="could not reach"):
            cluster_main(flows.stateless(TestingOutputConfig([])), addresses, 0, connect_timeout=0.5)


class Relay:
    """A plain TCP relay from ``listen`` to ``forward`` that keeps every byte it carries: what
    anyone on the network between two processes sees."""

    def __init__(self, listen: int, forward: int) -> None:
        self.forward = forward
        self.seen = bytearray()
        self._lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", listen))
        self.server.settimeout(0.2)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.forward))
            except OSError:  # process 0 is not listening yet: its peer connects again
                client.close()
                continue
            for source, sink in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(source, sink), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                with self._lock:
                    self.seen += chunk
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._threads[0].join(5)  # the accepting thread, before its socket goes
        self.server.close()
        for thread in self._threads[1:]:
            thread.join(5)


@pytest.mark.parametrize("encrypt", ["1", "0"], ids=["encrypted", "in-clear"])
def test_with_encryption_the_wire_shows_nothing_of_the_frames(procs, tmp_path, encrypt):
    """The same cluster through a relay that records the bytes process 1 sends process 0: in
    clear, the frames are there to read; encrypted, not even their magic is."""
    port0, port1, relay_port = free_ports(3)
    relay = Relay(relay_port, port0)
    out = str(tmp_path / "out")
    env = {"MILLRACE_CLUSTER_SECRET": "wire-secret", "MILLRACE_CLUSTER_ENCRYPT": encrypt}
    try:
        started = [
            _start(procs, [f"127.0.0.1:{port0}", f"127.0.0.1:{port1}"], 0, out, env, count=40),
            _start(procs, [f"127.0.0.1:{relay_port}", f"127.0.0.1:{port1}"], 1, out, env, count=40),
        ]
        for proc in started:
            _, stderr = proc.communicate(timeout=60)
            assert proc.returncode == 0, stderr
    finally:
        relay.close()
    assert Counter(_read_outputs(out)) == _expected_sums(2, 40)
    seen = bytes(relay.seen)
    assert len(seen) > 1000  # the traffic did go through the relay
    if encrypt == "1":
        assert b"CURVE" in seen and frames.MAGIC not in seen and b"proc_count" not in seen
    else:
        assert b"NULL" in seen and frames.MAGIC in seen and b"proc_count" in seen


def test_with_encryption_a_client_without_the_secret_is_refused(procs, tmp_path):
    """It may know the servers' public key (it is not a secret): its own key is not the one
    derived from the secret, so the handshake fails and nothing it sends is read."""
    ports = free_ports(2)
    addresses = [f"127.0.0.1:{port}" for port in ports]
    out = str(tmp_path / "out")
    env = {"MILLRACE_CLUSTER_SECRET": "s3cret", "MILLRACE_CLUSTER_ENCRYPT": "1"}
    started = [_start(procs, addresses, proc_id, out, env) for proc_id in range(2)]
    logs = [StderrLines(proc) for proc in started]
    _wait_running(started, out)
    ctx = zmq.Context()
    try:
        push = ctx.socket(zmq.PUSH)
        push.curve_serverkey = curve_keys(b"s3cret")[0]
        push.curve_publickey, push.curve_secretkey = zmq.curve_keypair()
        push.connect(f"tcp://127.0.0.1:{ports[0]}")
        push.send_multipart(frames.seal(None, frames.MESSAGE, 1, 0, 1, b"P.", b"x" * 8))
        logs[0].wait_for("refused a connection whose CURVE key is not the cluster's", 1)
        push.close(linger=0)
    finally:
        ctx.term()
    stderrs = _finish_exactly(started, logs, out)
    assert "dropped a frame" not in stderrs[0]


def test_encryption_needs_a_secret_and_is_on_by_default_in_pods(monkeypatch):
    with pytest.raises(ValueError, match="needs a cluster secret"):
        Security(None, encrypt=True)
    monkeypatch.setenv("MILLRACE_CLUSTER_ENCRYPT", "1")
    monkeypatch.delenv("MILLRACE_CLUSTER_SECRET", raising=False)
    monkeypatch.delenv("MILLRACE_CLUSTER_SECRET_FILE", raising=False)
    with pytest.raises(ValueError, match="MILLRACE_CLUSTER_ENCRYPT is on, but there is no cluster secret"):
        cluster_main(Dataflow(), ["127.0.0.1:1", "127.0.0.1:2"], 0)
    env = {
        "MILLRACE_SERVICE": "df",
        "MILLRACE_NAMESPACE": "ns",
        "MILLRACE_PROCESSES": "2",
        "MILLRACE_FLOW": "m:flow",
        "MILLRACE_POD_INDEX": "0",
    }
    assert pod.settings_from(env, "df-0").encrypt is True
    assert pod.settings_from({**env, "MILLRACE_CLUSTER_ENCRYPT": "0"}, "df-0").encrypt is False
    assert curve_keys(b"a") == curve_keys(b"a") != curve_keys(b"b")
