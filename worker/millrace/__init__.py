"""Millrace: fast Python dataflows on one thread, a local cluster, or Kubernetes.

The public API lives in the submodules, one concern each: :mod:`millrace.dataflow`
(building a flow), :mod:`millrace.execution` (running it), :mod:`millrace.inputs`,
:mod:`millrace.outputs`, :mod:`millrace.window`, :mod:`millrace.recovery`,
:mod:`millrace.testing` and :mod:`millrace.parse`.
"""

__version__ = "0.1.0"
