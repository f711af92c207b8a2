"""``millrace-operator``: run the operator (in a pod, or against your kubeconfig)."""

from __future__ import annotations

import argparse
import sys
import time

import kopf
import kubernetes

from .metrics import METRICS_PORT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="millrace-operator", description=__doc__)
    parser.add_argument("--namespace", action="append", default=[], help="watch only these namespaces (default: all)")
    parser.add_argument("--liveness", metavar="URL", help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=METRICS_PORT,
        metavar="PORT",
        help=f"serve the operator's Prometheus metrics at /metrics on this port (default {METRICS_PORT}; -1: off)",
    )
    parser.add_argument(
        "--peering",
        metavar="NAME",
        help="run as one of several replicas: only one is active, chosen through kopf's peering object NAME",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        default=15,
        metavar="SECONDS",
        help="with --peering: how long an operator that stopped renewing its record counts as alive",
    )
    args = parser.parse_args(argv)
    if not -1 <= args.metrics_port <= 65535:
        parser.error(f"--metrics-port must be a port (0-65535) or -1 (off), not {args.metrics_port}")
    if args.peering_lifetime < 5:
        parser.error(f"--peering-lifetime must be at least 5 seconds, not {args.peering_lifetime}")
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    from . import handlers  # registers the handlers

    handlers.metrics_port = None if args.metrics_port == -1 else args.metrics_port

    kopf.configure(verbose=args.verbose)
    settings = kopf.OperatorSettings()
    settings.peering.lifetime = args.peering_lifetime
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.peering is None,
        peering_name=args.peering,
        # The longest-running operator has the highest priority: one that starts later (a
        # restarted replica, a rolling upgrade's new pod) stands by instead of taking over.
        priority=-time.time_ns() // 1_000_000 if args.peering else None,
        settings=settings,
        liveness_endpoint=args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
