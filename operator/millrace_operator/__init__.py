"""The millrace Kubernetes operator: turns ``Dataflow`` resources into clusters of worker pods.

- :mod:`.spec`: a Dataflow's spec with the CRD's defaults applied, as a typed value.
- :mod:`.manifests`: pure functions building the children (Service, StatefulSet, ConfigMap,
  Secret) from a Dataflow.
"""
