"""Who may connect to a process's socket, and whether the traffic is encrypted.

Three postures, one per :class:`Security`:

- **a secret, encrypted** (``encrypt=True``): ZeroMQ CURVE. Every process derives one
  curve25519 key pair from the cluster secret (HKDF-SHA256, :func:`curve_keys`); it is the
  server key of every listening socket and the client key of every connection. A ZAP handler
  lets in only clients that prove they hold the derived key, so without the secret nobody
  completes the handshake, and no byte of the traffic can be read or changed on the wire.
- **a secret, not encrypted**: any host may connect, but every frame carries an HMAC under the
  secret, checked before its payload is decoded (:mod:`.frames`); the traffic can be read.
- **no secret**: a ZAP handler accepts connections only from the hosts of the address list
  (names resolved again when a connection comes from an address not known yet, as a restarted
  pod's address changes); everything else is refused at the handshake, before a single frame is
  read. Any process on those hosts can still send frames, which are unpickled.

ZAP needs an authenticator thread (pyzmq's :class:`~zmq.auth.thread.ThreadAuthenticator`);
the second posture needs none, which keeps its start as cheap as before.

>>> public, secret = curve_keys(b"s3cret")
>>> len(public), len(secret), public == curve_keys(b"s3cret")[0] != curve_keys(b"other")[0]
(40, 40, True)
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils import z85

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

__all__ = ["Security", "curve_keys"]

log = logging.getLogger("millrace.transport")

_DOMAIN = "millrace"


def curve_keys(secret: bytes) -> tuple[bytes, bytes]:
    """The Z85 ``(public, secret)`` curve25519 key pair every process of a cluster derives from
    its secret: HKDF-SHA256 (RFC 5869) to 32 bytes, which is a curve25519 secret key as it is
    (libsodium clamps it)."""
    prk = hmac.digest(b"millrace-curve-v1", secret, "sha256")
    okm = hmac.digest(prk, b"millrace curve25519 secret key\x01", "sha256")
    secret_key = z85.encode(okm)
    return zmq.curve_public(secret_key), secret_key


@dataclass(frozen=True)
class Security:
    """How a cluster's sockets protect it: ``secret`` (``None``: no secret, so connections are
    limited to ``hosts``, the host part of every address) and ``encrypt`` (CURVE; needs a secret)."""

    secret: bytes | None
    encrypt: bool = False
    hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.encrypt and self.secret is None:
            raise ValueError("encryption needs a cluster secret (its keys are derived from it)")

    def guard(self, ctx: zmq.Context[Any], listening: zmq.Socket[bytes]) -> ThreadAuthenticator | None:
        """Set up ``listening`` (before it binds) and start what checks its connections; the
        caller stops what it returns before it closes the context."""
        if self.secret is not None and not self.encrypt:
            return None
        from zmq.auth.thread import ThreadAuthenticator  # brings asyncio: only when needed

        listening.zap_domain = _DOMAIN.encode()
        if self.secret is not None:
            public, secret_key = curve_keys(self.secret)
            listening.curve_server = True
            listening.curve_secretkey = secret_key
            listening.curve_publickey = public
            auth: ThreadAuthenticator = ThreadAuthenticator(ctx, log=log)
            auth.start()
            auth.configure_curve_callback(_DOMAIN, _OneKey(public))
            return auth
        from .allowlist import HostAllowlist

        allowlist = HostAllowlist(ctx, self.hosts)
        allowlist.start()
        return allowlist

    def connecting(self, push: zmq.Socket[bytes]) -> None:
        """Set up a connecting socket (before it connects)."""
        if self.encrypt and self.secret is not None:
            public, secret_key = curve_keys(self.secret)
            push.curve_serverkey = public
            push.curve_publickey = public
            push.curve_secretkey = secret_key


class _OneKey:
    """A ZAP credentials provider that lets in the cluster's derived client key only."""

    def __init__(self, public: bytes) -> None:
        self.public = public

    def callback(self, domain: str, key: bytes) -> bool:
        if hmac.compare_digest(key, self.public):
            return True
        log.warning("refused a connection whose CURVE key is not the cluster's (another secret?)")
        return False
