"""``python -m millrace_operator.smoke``: apply a tiny Dataflow, wait for it to succeed, delete it.

The Helm chart's ``helm test`` hook runs this in the cluster; it also works from a laptop
against your kubeconfig. Exit status 0 when the Dataflow reached Succeeded, 1 when it failed or
the time ran out (the message says which, with the Dataflow's status), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import kubernetes

GROUP, VERSION, PLURAL = "millrace.dev", "v1alpha1", "dataflows"

# Sums 0..99 over however many processes: each worker reads its share of the input, the sum
# happens on the worker that owns the key, and it is printed once it is complete.
FLOW = """\
from millrace.dataflow import Dataflow
from millrace.inputs import TestingInputConfig
from millrace.outputs import StdOutputConfig

flow = Dataflow()
flow.input("numbers", TestingInputConfig(range(100)))
flow.map(lambda n: ("sum", n))
flow.reduce("total", lambda a, b: a + b, lambda total: total == 4950)
flow.capture(StdOutputConfig())
"""


def __getattr__(name: str) -> Any:
    """``millrace_operator.smoke:flow``: the same flow as an import path, for Dataflows whose
    ``flow.module`` names a flow already in the image (the e2e suite switches to it)."""
    if name != "flow":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    namespace: dict[str, Any] = {}
    exec(compile(FLOW, f"{__name__}.FLOW", "exec"), namespace)
    return namespace["flow"]


def dataflow(name: str, namespace: str, processes: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Dataflow",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/component": "smoke-test"}},
        "spec": {"processes": processes, "epochSeconds": 1, "flow": {"code": FLOW}},
    }


def verdict(status: dict[str, Any] | None) -> bool | None:
    """True once succeeded, False once failed, None while still on its way."""
    phase = (status or {}).get("phase")
    if phase == "Succeeded":
        return True
    if phase == "Failed":
        return False
    return None


def run(api: Any, name: str, namespace: str, processes: int, timeout: float, poll: float = 2.0) -> tuple[bool, str]:
    """Apply, wait, delete; (succeeded, what happened)."""
    try:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except kubernetes.client.ApiException as exc:
        if exc.status != 404:
            raise
    else:
        # A leftover of an earlier run: wait until it is gone before applying a new one.
        while True:
            try:
                api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            except kubernetes.client.ApiException as exc:
                if exc.status == 404:
                    break
                raise
            time.sleep(poll)
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, dataflow(name, namespace, processes))
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    try:
        while time.monotonic() < deadline:
            status = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status") or {}
            done = verdict(status)
            if done is not None:
                outcome = "succeeded" if done else "failed"
                return done, f"Dataflow {namespace}/{name} {outcome}: {status.get('message', '')}"
            time.sleep(poll)
        return False, (
            f"Dataflow {namespace}/{name} did not finish within {timeout:g} s; "
            f"phase {status.get('phase', 'unset')}: {status.get('message', '')}"
        )
    finally:
        try:
            api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m millrace_operator.smoke",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--name", default="millrace-smoke")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for success")
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error(f"--processes must be at least 1, got {args.processes}")
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    succeeded, message = run(
        kubernetes.client.CustomObjectsApi(), args.name, args.namespace, args.processes, args.timeout
    )
    print(message, file=sys.stdout if succeeded else sys.stderr)
    return 0 if succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
