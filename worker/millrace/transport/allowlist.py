"""The ZAP handler of a cluster without a secret: connections only from its hosts.

Imported only by such a cluster: pyzmq's authenticator thread brings asyncio, whose import
costs every other process's start about 45 ms.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Sequence
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

__all__ = ["HostAllowlist"]

log = logging.getLogger("millrace.transport")

# How often the host names may be resolved again when a connection comes from an unknown address.
_RESOLVE_EVERY = 1.0


def addresses_of(host: str) -> set[str]:
    """The IP addresses ``host`` resolves to now (none: not resolvable yet, as a pod's name
    before the pod starts).

    >>> addresses_of("127.0.0.1"), addresses_of("localhost") >= {"127.0.0.1"}
    ({'127.0.0.1'}, True)
    """
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except OSError:
        return set()


class HostAllowlist(ThreadAuthenticator):
    """Accepts connections only from the addresses ``hosts`` resolve to; a connection from any
    other address is refused at the handshake and logged."""

    def __init__(self, ctx: zmq.Context[Any], hosts: Sequence[str]) -> None:
        super().__init__(ctx, log=log)
        self.hosts = tuple(dict.fromkeys(hosts))  # once each, in order
        self._resolved_at = 0.0
        self._resolve()

    def _resolve(self) -> None:
        self._resolved_at = time.monotonic()
        for host in self.hosts:
            if found := addresses_of(host) - self._allowed:
                self.allow(*found)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) >= 6:
            address = msg[3].decode("utf-8", "replace")
            if address not in self._allowed and time.monotonic() - self._resolved_at >= _RESOLVE_EVERY:
                self._resolve()  # a peer's name may point somewhere new (a restarted pod)
            if address not in self._allowed:
                log.warning(
                    "refused a connection from %s: without a cluster secret only the hosts of the "
                    "address list (%s) may connect",
                    address,
                    ", ".join(self.hosts),
                )
                # Refused here: pyzmq lets every connection in while its list is still empty.
                self._send_zap_reply(msg[1], b"400", b"Address not allowed")
                return
        await super().handle_zap_message(msg)
