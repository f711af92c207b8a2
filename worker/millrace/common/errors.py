"""The error every layer may raise when the cluster stops (see :mod:`millrace.runtime.errors`
for how the runtime names the step and the worker behind it)."""

from __future__ import annotations

__all__ = ["ClusterError", "MetricsServerError", "PeerLost"]


class ClusterError(RuntimeError):
    """The cluster stopped because a worker or a peer failed; the message says which and why."""


class PeerLost(ClusterError):
    """The cluster stopped because a peer went away: it was stopped or died, could not be
    reached, lost frames, or started again. The flow itself did not fail, so a cluster formed
    again can go on (from its recovery state, when it has one); a pod does just that."""


class MetricsServerError(OSError):
    """A process cannot serve its metrics: the port is taken (or not allowed); the message
    names it."""
