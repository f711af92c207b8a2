"""Flows the e2e suite and benchmarks/operator_scale.py run on the cluster (as inline code)."""

# Runs for ever, doing nothing: a Running Dataflow that changes nothing.
SLEEPING_FLOW = """\
import time
from millrace.dataflow import Dataflow
from millrace.inputs import ManualInputConfig
from millrace.outputs import StdOutputConfig

def naps(worker_index, worker_count, resume_state):
    while True:
        time.sleep(1)
        yield None

flow = Dataflow()
flow.input("naps", ManualInputConfig(naps))
flow.capture(StdOutputConfig())
"""
