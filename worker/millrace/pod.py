"""The worker pod entrypoint (``millrace-worker``): one process of a cluster, the pod of one Job.

Everything comes from the environment the operator writes (docs/pod-contract.md): the process
id from the pod-index label or the hostname's ordinal, the peers from the headless Service's
DNS names, the flow from an import path or a mounted file, the cluster key from a mounted
Secret. No Kubernetes API access is needed.

A finished flow leaves a marker in ``$MILLRACE_STATE_DIR`` (an emptyDir that survives container
restarts), so a restarted container reports completion again instead of re-running the flow.
The outcome goes to the termination log, where the operator reads it.

A pod outlives its peers' troubles: when a peer goes away (its pod deleted or restarted, its
process killed, the network cut) the process forms the cluster again with whoever comes back,
resuming from the recovery volumes, instead of exiting into a crash loop. While it waits it is
not ready: ``GET /ready`` on ``$MILLRACE_HEALTH_PORT`` (the readiness probe) answers 200 only
while the process is in a formed cluster (:mod:`millrace.readiness`). SIGTERM (a pod deletion)
stops the flow at once, without committing the unfinished epoch, and tells the peers, which wait
for the pod's replacement.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import runpy
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from . import plan
from .common.clock import SYSTEM_CLOCK
from .common.errors import PeerLost
from .common.settings import VARIABLES, SettingsError, ordinal, read
from .dataflow import Dataflow
from .execution import PeriodicEpochConfig
from .readiness import Readiness
from .recovery import SqliteRecoveryConfig
from .runtime import cluster
from .runtime.metrics_server import serving
from .transport.addresses import split_address

if TYPE_CHECKING:
    from .runtime.metrics import ProcessMetrics

log = logging.getLogger("millrace.pod")

COMPLETED = "millrace: completed"
FAILED = "millrace: failed: "
STOPPED = "millrace: stopped: "
# How long a process waits after its cluster broke before it forms it again: the peers that
# noticed first have closed their sockets by then.
_REFORM_PAUSE = 1.0
_MESSAGE_LIMIT = 4000  # Kubernetes keeps at most 4096 bytes of a termination message


#: What ``millrace-worker`` says when run outside a pod (without the operator's environment).
OUTSIDE_A_POD = (
    "millrace-worker is the entrypoint of a worker pod, configured by the environment the "
    "operator writes (docs/pod-contract.md); to run a flow on this machine, use "
    "`millrace run FILE_OR_MODULE[:ATTR]`"
)

# A malformed pod environment is a settings error naming the variable (the name is kept for
# those who catch it).
PodConfigError = SettingsError


@dataclass(frozen=True)
class PodSettings:
    proc_id: int
    addresses: list[str]
    workers_per_proc: int
    flow_module: str | None
    flow_file: Path | None
    secret_file: Path | None
    epoch_seconds: float
    recovery_dir: Path | None
    state_dir: Path | None
    dns_timeout: float
    connect_timeout: float
    cluster_id: str
    termination_log: Path
    #: Encrypt the traffic (CURVE): on unless MILLRACE_CLUSTER_ENCRYPT turns it off; needs a secret.
    encrypt: bool = True
    #: Where ``GET /ready`` answers the readiness probe (``None``: not served).
    health_port: int | None = None
    #: Where ``/metrics`` is served, for Prometheus (``None``: not served).
    metrics_port: int | None = None


def proc_id_from(env: Mapping[str, str], hostname: str) -> int:
    """``MILLRACE_POD_INDEX`` (the operator sets it per Job), else the ordinal of
    ``MILLRACE_POD_NAME``, else of the hostname."""
    index: int | None = read(env, "MILLRACE_POD_INDEX")
    if index is not None:
        return index
    for source in (env.get("MILLRACE_POD_NAME", ""), hostname):
        if source and (found := ordinal(source)) is not None:
            return found
    raise PodConfigError(
        "cannot tell this pod's process id: MILLRACE_POD_INDEX is empty and neither "
        f"MILLRACE_POD_NAME nor the hostname {hostname!r} ends in -<ordinal>"
    )


def service_addresses(env: Mapping[str, str]) -> list[str]:
    """``N-i.N.<namespace>.svc.<domain>:<port>`` for every process i."""
    service = read(env, "MILLRACE_SERVICE", required=True)
    namespace = read(env, "MILLRACE_NAMESPACE", required=True)
    domain = read(env, "MILLRACE_CLUSTER_DOMAIN")
    processes = read(env, "MILLRACE_PROCESSES", required=True)
    port = read(env, "MILLRACE_PORT")
    return [f"{service}-{i}.{service}.{namespace}.svc.{domain}:{port}" for i in range(processes)]


def settings_from(env: Mapping[str, str], hostname: str) -> PodSettings:
    addresses = service_addresses(env)
    proc_id = proc_id_from(env, hostname)
    if not 0 <= proc_id < len(addresses):
        raise PodConfigError(
            f"process id {proc_id} is outside 0..{len(addresses) - 1} (MILLRACE_PROCESSES={len(addresses)})"
        )
    module = read(env, "MILLRACE_FLOW")
    file = read(env, "MILLRACE_FLOW_FILE")
    if (module is None) == (file is None):
        raise PodConfigError("set exactly one of MILLRACE_FLOW (module:attribute) and MILLRACE_FLOW_FILE")
    return PodSettings(
        proc_id=proc_id,
        addresses=addresses,
        workers_per_proc=read(env, "MILLRACE_WORKERS_PER_PROCESS"),
        flow_module=module,
        flow_file=file,
        secret_file=read(env, "MILLRACE_CLUSTER_SECRET_FILE"),
        epoch_seconds=read(env, "MILLRACE_EPOCH_SECONDS"),
        recovery_dir=read(env, "MILLRACE_RECOVERY_DIR"),
        state_dir=read(env, "MILLRACE_STATE_DIR"),
        dns_timeout=read(env, "MILLRACE_DNS_TIMEOUT"),
        connect_timeout=read(env, "MILLRACE_CONNECT_TIMEOUT"),
        cluster_id=read(env, "MILLRACE_CLUSTER_ID"),
        termination_log=read(env, "MILLRACE_TERMINATION_LOG"),
        encrypt=read(env, "MILLRACE_CLUSTER_ENCRYPT") is not False,
        health_port=read(env, "MILLRACE_HEALTH_PORT"),
        metrics_port=read(env, "MILLRACE_METRICS_PORT"),
    )


def load_flow(module: str | None, file: Path | None) -> Dataflow:
    """The ``Dataflow`` at ``module:attribute``, or the attribute ``flow`` of a Python file."""
    if module is not None:
        name, sep, attribute = module.partition(":")
        if not sep or not name or not attribute:
            raise PodConfigError(f"the flow import path must be module:attribute, got {module!r}")
        flow = getattr(importlib.import_module(name), attribute, None)
        where = module
    else:
        assert file is not None
        namespace = runpy.run_path(str(file), run_name="__millrace_flow__")
        flow = namespace.get("flow")
        attribute = "flow"
        where = str(file)
    if not isinstance(flow, Dataflow):
        raise PodConfigError(f"{where} does not define a Dataflow named {attribute!r} (got {type(flow).__name__})")
    return flow


def step_ids(flow: Dataflow) -> list[str]:
    """Every step of ``flow``, in flow order, as the metrics' ``step_id`` label names it: its id
    (inputs and stateful steps have one), else its kind and position (``map#2``, ``capture#4``),
    so that a dashboard's series and the Dataflow's ``status.steps`` say the same names.

    >>> from millrace.inputs import TestingInputConfig
    >>> from millrace.outputs import StdOutputConfig
    >>> flow = Dataflow()
    >>> flow.input("lines", TestingInputConfig(["a b"]))
    >>> flow.flat_map(str.split)
    >>> flow.reduce("count", lambda a, b: a + b, lambda total: total > 9)
    >>> flow.capture(StdOutputConfig())
    >>> step_ids(flow)
    ['lines', 'flat_map#1', 'count', 'capture#3']
    """
    return [plan.step_label(step) for step in flow.steps]


def _peer_names(addresses: Sequence[str], timeout: float) -> None:
    """Wait, however long it takes, until every peer's name resolves; say who is missing every
    ``timeout`` seconds (a pod not yet scheduled, or a Job still replacing one)."""
    while True:
        try:
            wait_for_names(addresses, timeout)
            return
        except PodConfigError as exc:
            log.warning("%s; still waiting", exc)


def wait_for_names(addresses: Sequence[str], timeout: float) -> None:
    """Wait until every peer's DNS name resolves (a pod's name appears once it exists)."""
    # Real time, whatever clock a flow reads: this waits for the cluster's DNS.
    monotonic = SYSTEM_CLOCK.monotonic
    deadline = monotonic() + timeout
    pending = {split_address(address)[0] for address in addresses}
    while True:
        for host in sorted(pending):
            try:
                socket.getaddrinfo(host, None)
                pending.discard(host)
            except socket.gaierror:
                pass
        if not pending:
            return
        if monotonic() >= deadline:
            raise PodConfigError(f"these peer names did not resolve within {timeout:g} s: {', '.join(sorted(pending))}")
        time.sleep(0.5)


def _report(path: Path, message: str) -> None:
    try:
        path.write_text(message[:_MESSAGE_LIMIT])
    except OSError as exc:  # no termination log outside Kubernetes: the log line is enough
        log.debug("cannot write the termination message to %s: %s", path, exc)


def run(settings: PodSettings) -> None:
    """Run this pod's process until the flow ends, forming the cluster again whenever a peer
    goes away (see the module docstring)."""
    flow = load_flow(settings.flow_module, settings.flow_file)
    secret = settings.secret_file.read_bytes().strip() if settings.secret_file else None
    if secret == b"":
        raise PodConfigError(f"the cluster secret file {settings.secret_file} is empty")
    # On Kubernetes the traffic crosses the pod network: encrypted whenever there is a secret
    # (the operator always mounts one), unless MILLRACE_CLUSTER_ENCRYPT=0 says otherwise.
    encrypt = settings.encrypt and secret is not None
    if settings.encrypt and secret is None and len(settings.addresses) > 1:
        log.warning(
            "no cluster secret (MILLRACE_CLUSTER_SECRET_FILE): traffic is neither encrypted nor "
            "authenticated; only the hosts of the address list may connect"
        )
    readiness = Readiness(settings.state_dir, settings.health_port)
    readiness.loaded(step_ids(flow))  # GET /steps: the operator reads them into status.steps
    # One server for the life of the pod: it answers while the cluster forms again, and each
    # run reports to it in turn.
    with serving(settings.metrics_port) as metrics:
        _run_until_done(settings, flow, secret, encrypt, readiness, metrics)


def _run_until_done(
    settings: PodSettings,
    flow: Dataflow,
    secret: bytes | None,
    encrypt: bool,
    readiness: Readiness,
    metrics: ProcessMetrics | None,
) -> None:
    attempt = 1
    while True:
        if len(settings.addresses) > 1:  # a single process has no peers to find
            _peer_names(settings.addresses, settings.dns_timeout)
        try:
            cluster.run_process(
                flow,
                settings.addresses,
                settings.proc_id,
                workers_per_proc=settings.workers_per_proc,
                epoch_config=PeriodicEpochConfig(timedelta(seconds=settings.epoch_seconds)),
                recovery_config=SqliteRecoveryConfig(settings.recovery_dir) if settings.recovery_dir else None,
                secret=secret,
                connect_timeout=settings.connect_timeout,
                cluster_id=settings.cluster_id,
                on_formed=readiness.formed,
                encrypt=encrypt,
                metrics=metrics,
            )
            return
        except PeerLost as exc:
            attempt += 1
            log.warning("%s; forming the cluster again (attempt %d)", exc, attempt)
            time.sleep(_REFORM_PAUSE)
        finally:
            readiness.clear()


def _stop_on_sigterm() -> None:
    """SIGTERM (the kubelet stopping the pod) stops the flow as Ctrl-C does: promptly, with
    nothing committed for the unfinished epoch, and the peers told."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, stop)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="millrace-worker",
        description="Run this pod's process of a millrace cluster (configured by environment).",
    )
    parser.add_argument("--flow", help="module:attribute of the flow (overrides MILLRACE_FLOW)")
    parser.add_argument("--flow-file", help="a Python file defining `flow` (overrides MILLRACE_FLOW_FILE)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _stop_on_sigterm()
    env = dict(os.environ)
    if args.flow:
        env["MILLRACE_FLOW"], env["MILLRACE_FLOW_FILE"] = args.flow, ""
    if args.flow_file:
        env["MILLRACE_FLOW_FILE"], env["MILLRACE_FLOW"] = args.flow_file, ""
    termination_log: Path = VARIABLES["MILLRACE_TERMINATION_LOG"].default
    try:
        termination_log = read(env, "MILLRACE_TERMINATION_LOG")
        settings = settings_from(env, socket.gethostname())
        marker = settings.state_dir / "completed" if settings.state_dir else None
        if marker is not None and marker.exists():
            log.info("this flow already completed here (%s); not running it again", marker)
            _report(settings.termination_log, COMPLETED)
            return 0
        log.info("process %d of %d", settings.proc_id, len(settings.addresses))
        run(settings)
    except PodConfigError as exc:
        _report(termination_log, f"{FAILED}{type(exc).__name__}: {exc}")
        if "MILLRACE_SERVICE" not in env:  # every worker pod has it: this is not one
            print(f"millrace-worker: error: {exc}; {OUTSIDE_A_POD}", file=sys.stderr)
            return 2
        log.error("the pod's configuration is wrong: %s", exc)  # one line: the traceback adds nothing
        return 1
    except KeyboardInterrupt as exc:
        log.warning("stopped (%s)", exc or "Ctrl-C")
        _report(termination_log, f"{STOPPED}{exc or 'SIGINT'}")
        return 143 if str(exc) == "SIGTERM" else 130
    except BaseException as exc:  # every failure must reach the operator
        log.error("the flow failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
        _report(termination_log, f"{FAILED}{type(exc).__name__}: {exc}")
        return 130 if isinstance(exc, KeyboardInterrupt) else 1
    if marker is not None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("completed\n")
    _report(settings.termination_log, COMPLETED)
    log.info("the flow completed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
