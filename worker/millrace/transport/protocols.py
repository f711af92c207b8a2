"""What the transport needs from the layer above it, written down here so that the transport
never imports the runtime: :class:`millrace.runtime.exchange.Exchange` satisfies
:class:`Exchange` by its shape (mypy checks that where the runtime hands it to a link)."""

from __future__ import annotations

import threading
from typing import Any, Protocol

__all__ = ["Exchange", "Message"]

# What the runtime sends between workers; to the transport, any picklable tuple.
Message = tuple[Any, ...]


class Exchange(Protocol):
    """The workers of this process, as a link delivers to them: messages from other processes
    go to local workers, and a failure a link detects (or a peer reports) stops them all."""

    @property
    def stopping(self) -> threading.Event:
        """Set once the cluster is failing."""
        ...

    @property
    def reason(self) -> str | None:
        """Why the cluster is failing (the first reason given), if it is."""
        ...

    def is_local(self, worker: int) -> bool: ...

    def deliver(self, dest: int, msg: Message, sender: int | None = None) -> None:
        """Hand ``msg``, which came from process ``sender``, to local worker ``dest``."""
        ...

    def fail(self, reason: str, *, from_remote: bool = False, peer_lost: bool = False) -> None: ...
