"""A process's listening socket: the PULL socket every peer's frames arrive on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import zmq

from ..common.errors import ClusterError
from .security import Security

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

__all__ = ["HWM", "Listener"]

# Per-peer socket buffers, in frames; each frame holds up to a few batches.
HWM = 64


class Listener:
    """A process's PULL socket, bound at ``endpoint`` (``address`` names it in errors), that
    admits connections as ``security`` says (see :mod:`.security`; default: any connection,
    whose frames are authenticated, or not, by the link).

    A link normally binds its own at :meth:`ZmqLink.start`. ``spawn_cluster`` binds one in each
    child first, on any free port (:meth:`any_port`), and only then hands out the address
    list: a port chosen free and bound later could be taken by another program in between.
    """

    def __init__(self, endpoint: str, address: str, proc_id: int, security: Security | None = None) -> None:
        self.ctx = zmq.Context()
        self.socket = self.ctx.socket(zmq.PULL)
        self.socket.setsockopt(zmq.RCVHWM, HWM)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.security = security
        # Started before the bind: no connection may come in before its checks are in place.
        self._auth: ThreadAuthenticator | None = security.guard(self.ctx, self.socket) if security else None
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise ClusterError(f"process {proc_id} cannot listen on {address}: {exc}") from None
        bound = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.port = int(bound.rsplit(":", 1)[1])

    @classmethod
    def any_port(cls, proc_id: int, security: Security | None = None) -> Listener:
        """Bound on loopback, on a port the system picks."""
        return cls("tcp://127.0.0.1:*", "127.0.0.1 (any free port)", proc_id, security)

    def close(self) -> None:
        self.socket.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self.ctx.term()
