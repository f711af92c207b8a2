"""The error every layer may raise when the cluster stops (see :mod:`millrace.runtime.errors`
for how the runtime names the step and the worker behind it)."""

from __future__ import annotations

__all__ = ["ClusterError"]


class ClusterError(RuntimeError):
    """The cluster stopped because a worker or a peer failed; the message says which and why."""
