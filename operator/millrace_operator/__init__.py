"""The millrace Kubernetes operator: turns ``Dataflow`` resources into clusters of worker pods.

- :mod:`.spec`: a Dataflow's spec with the CRD's defaults applied, as a typed value.
- :mod:`.manifests`: pure functions building the children (Service, StatefulSet, ConfigMap,
  Secret) from a Dataflow.
- :mod:`.metrics`: the operator's own Prometheus metrics.
- :mod:`.steps`: the flow's steps, asked of process 0's worker, for ``status.steps``.
"""
