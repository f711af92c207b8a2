"""The wire format between processes.

A frame is a ZeroMQ multipart message ``[MAGIC, header, payload, mac]``. The header says what
the frame is, which process sent it, to which process, its sequence number, the sender's run
and the destination's run. A run is a random value each process draws when it joins a cluster;
a process learns each peer's run at HELLO (see :mod:`.admission`), and every frame it sends
after that names both, so a frame is bound to its sender, its destination and this run of both:
recorded and sent to another process, or to a later run, it is refused. The MAC is an
HMAC-SHA256 of header and payload under the cluster secret. :func:`open_frame` checks all of that before
the payload is touched, and only :data:`MESSAGE` payloads are ever decoded, after that check.

A :data:`MESSAGE` payload is one tag byte and the encoded messages: :mod:`marshal` when they
hold only the built-in types it takes as they are (a batch of ``(str, int)`` pairs, say),
which encodes and decodes faster than :mod:`pickle`, and ``pickle`` for anything else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import marshal
import pickle
import struct
from dataclasses import dataclass
from typing import Any

MAGIC = b"MRC4"  # MRC3: no destination run; MRC2: no run at all; MRC1: payloads without a tag byte

HELLO = 1  # payload: JSON of the sender's view of the cluster shape
MESSAGE = 2  # payload: a pickled worker message (see millrace.runtime.exchange)
ABORT = 3  # payload: a cause byte (LOST or FAILED), then the UTF-8 reason
BYE = 4  # payload: empty; the sender has finished and sends nothing more

_KINDS = (HELLO, MESSAGE, ABORT, BYE)
# kind, sender process, destination process, sequence number, sender's run, destination's run
_HEADER = struct.Struct("!BHHQ8s8s")
_MAC_SIZE = 32
RUN_SIZE = 8
#: The destination run of a frame sent before the destination's run is known (a first HELLO).
NO_RUN = bytes(RUN_SIZE)

# Why a cluster stops, as an ABORT says it: a peer went away (stopped, died, unreachable), which
# a cluster formed again can get over, or the flow itself failed, which no new attempt cures.
LOST = b"L"
FAILED = b"F"


class BadFrame(ValueError):
    """A frame that is malformed or not authenticated; it is dropped, never decoded.

    ``kind`` and ``sender`` are what the header claimed, when it could be parsed; ``cause``
    is ``"unauthenticated"`` for a MAC that does not match, ``"malformed"`` otherwise (see
    :data:`.counters.REFUSAL_CAUSES`).
    """

    def __init__(
        self, reason: str, kind: int | None = None, sender: int | None = None, cause: str = "malformed"
    ) -> None:
        super().__init__(reason)
        self.kind = kind
        self.sender = sender
        self.cause = cause


@dataclass(frozen=True)
class Frame:
    kind: int
    sender: int
    dest: int
    seq: int
    payload: bytes
    run: bytes
    dest_run: bytes = NO_RUN


def derive_key(secret: bytes | None) -> bytes | None:
    """The MAC key of a cluster secret (``None``: unauthenticated cluster)."""
    if secret is None:
        return None
    return hashlib.sha256(b"millrace-cluster-v1\0" + secret).digest()


def seal(
    key: bytes | None,
    kind: int,
    sender: int,
    dest: int,
    seq: int,
    payload: bytes,
    run: bytes = NO_RUN,
    dest_run: bytes = NO_RUN,
) -> list[bytes]:
    """The parts of a frame from process ``sender`` (of ``run``) to process ``dest`` (of
    ``dest_run``), MACed under ``key`` (``None``: no MAC)."""
    header = _HEADER.pack(kind, sender, dest, seq, run, dest_run)
    # hmac.digest is OpenSSL's one-shot HMAC: no Python-level object per frame.
    mac = hmac.digest(key, header + payload, "sha256") if key is not None else b""
    return [MAGIC, header, payload, mac]


def open_frame(key: bytes | None, parts: list[bytes], proc_count: int) -> Frame:
    """Parse and authenticate ``parts``; raise :class:`BadFrame` saying what is wrong."""
    if len(parts) != 4:
        raise BadFrame(f"expected 4 parts, got {len(parts)}")
    magic, header, payload, mac = parts
    if magic != MAGIC:
        raise BadFrame(f"bad magic {bytes(magic[:8])!r}")
    if len(header) != _HEADER.size:
        raise BadFrame(f"header of {len(header)} bytes, expected {_HEADER.size}")
    kind, sender, dest, seq, run, dest_run = _HEADER.unpack(header)
    if kind not in _KINDS:
        raise BadFrame(f"unknown frame kind {kind}")
    if sender >= proc_count:
        raise BadFrame(f"sender process {sender} is not in this cluster of {proc_count}")
    if key is not None:
        if len(mac) != _MAC_SIZE or not hmac.compare_digest(mac, hmac.digest(key, header + payload, "sha256")):
            raise BadFrame(
                f"authentication failed for a frame claiming to come from process {sender}",
                kind,
                sender,
                cause="unauthenticated",
            )
    return Frame(kind, sender, dest, seq, bytes(payload), run, dest_run)


def abort_payload(reason: str, *, lost: bool) -> bytes:
    return (LOST if lost else FAILED) + reason.encode("utf-8", "replace")


def parse_abort(payload: bytes) -> tuple[str, bool]:
    """``(reason, lost)`` of an ABORT payload (see :data:`LOST`)."""
    cause, text = payload[:1], payload[1:].decode("utf-8", "replace")
    return text, cause == LOST


def hello_payload(proc_id: int, proc_count: int, workers_per_proc: int, cluster_id: str) -> bytes:
    return json.dumps(
        {
            "proc_id": proc_id,
            "proc_count": proc_count,
            "workers_per_proc": workers_per_proc,
            "cluster_id": cluster_id,
        }
    ).encode()


def parse_hello(payload: bytes) -> dict[str, int | str]:
    try:
        shape = json.loads(payload)
        parsed: dict[str, int | str] = {
            name: int(shape[name]) for name in ("proc_id", "proc_count", "workers_per_proc")
        }
        parsed["cluster_id"] = str(shape.get("cluster_id", ""))
        return parsed
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadFrame(f"malformed HELLO payload: {exc}") from None


_MARSHAL = b"M"
_PICKLE = b"P"


def dump_messages(messages: list[tuple[int, Any]]) -> bytes:
    """Encode ``(destination worker, message)`` pairs bound for one process."""
    try:
        # marshal refuses every subclass and every type it does not know (ValueError), so
        # what it encodes decodes as exactly the same types.
        return _MARSHAL + marshal.dumps(messages)
    except ValueError:
        return _PICKLE + pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)


def load_messages(payload: bytes) -> list[tuple[int, Any]]:
    """Decode an authenticated MESSAGE payload (see the module docstring)."""
    tag, body = payload[:1], memoryview(payload)[1:]
    try:
        if tag == _MARSHAL:
            messages = marshal.loads(body)
        elif tag == _PICKLE:
            messages = pickle.loads(body)
        else:
            raise ValueError(f"unknown encoding tag {bytes(tag)!r}")
    except Exception as exc:
        raise BadFrame(f"undecodable message: {type(exc).__name__}: {exc}") from None
    if type(messages) is not list or not all(
        type(m) is tuple and len(m) == 2 and type(m[0]) is int and type(m[1]) is tuple for m in messages
    ):
        raise BadFrame("a MESSAGE payload must be a list of (worker, message) pairs")
    return messages
