"""One traced cluster_main process: ``python traced_proc.py --addresses A,B --proc-id I --url URL``.

It sets up tracing to the OTLP/HTTP receiver at URL, runs a keyed sum on two worker threads as
process I of the cluster at the addresses, and exports its spans before it exits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from millrace.dataflow import Dataflow
from millrace.execution import cluster_main
from millrace.inputs import TestingInputConfig
from millrace.outputs import StdOutputConfig
from millrace.tracing import OtlpTracingConfig, setup_tracing


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addresses", required=True)
    parser.add_argument("--proc-id", type=int, required=True)
    parser.add_argument("--url", required=True)
    args = parser.parse_args()
    tracer = setup_tracing(OtlpTracingConfig("proc-cluster", args.url), log_level="INFO")
    flow = Dataflow()
    flow.input("inp", TestingInputConfig([(f"k{i % 5}", i) for i in range(40)]))
    flow.reduce("sum", lambda acc, x: acc + x, lambda acc: acc >= 150)
    flow.capture(StdOutputConfig())
    try:
        cluster_main(flow, args.addresses.split(","), args.proc_id, worker_count_per_proc=2)
    finally:
        tracer.shutdown()


if __name__ == "__main__":
    main()
