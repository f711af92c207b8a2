"""``millrace-operator``: run the operator (in a pod, or against your kubeconfig)."""

from __future__ import annotations

import argparse
import sys

import kopf
import kubernetes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="millrace-operator", description=__doc__)
    parser.add_argument("--namespace", action="append", default=[], help="watch only these namespaces (default: all)")
    parser.add_argument("--liveness", metavar="URL", help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    from . import handlers  # noqa: F401 - registers the handlers

    kopf.configure(verbose=args.verbose)
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=True,
        liveness_endpoint=args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
