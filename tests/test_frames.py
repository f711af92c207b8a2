"""The wire encoding of worker messages: exact types back, and a clear refusal of anything
malformed (the hostile-bytes tests in test_cluster.py send such frames to a live cluster)."""

from __future__ import annotations

import enum
import marshal
import pickle
from collections import namedtuple
from dataclasses import dataclass
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from millrace.transport import frames
from millrace.transport.admission import Admission

Point = namedtuple("Point", "x y")


class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    pass


@dataclass(frozen=True)
class Reading:
    sensor: str
    value: float


def types_of(value):
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return (type(value), [types_of(v) for v in value])
    return type(value)


def test_built_in_values_travel_as_marshal_and_come_back_the_same():
    batch = [("word", 1), (7, "v"), (True, None), (1.5, b"x", {"d": [1, 2]}, frozenset({1})), (-(10**30), 2j)]
    messages = [(3, (0, 1, 2, batch))]
    payload = frames.dump_messages(messages)
    assert payload[:1] == b"M"
    back = frames.load_messages(payload)
    assert back == messages and types_of(back) == types_of(messages)


@pytest.mark.parametrize("value", [Point(1, 2), Colour.RED, Name("n"), Reading("s", 1.0)])
def test_anything_else_travels_as_pickle_with_its_own_type(value):
    messages = [(0, (0, 1, 2, [("k", value)]))]
    payload = frames.dump_messages(messages)
    assert payload[:1] == b"P"
    back = frames.load_messages(payload)
    assert back == messages and type(back[0][1][3][0][1]) is type(value)


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"", "undecodable message"),
        (b"X" + marshal.dumps([]), "unknown encoding tag b'X'"),
        (b"M" + marshal.dumps([(0, (1,))])[:-3], "undecodable message"),
        (b"P\x80\x04N", "undecodable message"),
        (b"M" + marshal.dumps({"not": "a list"}), "list of (worker, message) pairs"),
        (b"P" + pickle.dumps([(0, [1])]), "list of (worker, message) pairs"),
        (pickle.dumps([(0, (1,))]), "undecodable message"),  # an MRC1 payload: no tag
    ],
)
def test_a_malformed_payload_is_refused_by_name(payload, reason):
    with pytest.raises(frames.BadFrame, match=reason.replace("(", r"\(").replace(")", r"\)")):
        frames.load_messages(payload)


# -- arbitrary bytes from the network ------------------------------------------------------------

_HEADER_SIZE = frames._HEADER.size


def _parts() -> st.SearchStrategy[list[bytes]]:
    """Anything a ZeroMQ peer can send: any parts, or ones shaped like a frame (magic, a header
    of the right size or not, a payload, a MAC)."""
    header = st.one_of(st.binary(max_size=40), st.binary(min_size=_HEADER_SIZE, max_size=_HEADER_SIZE))
    shaped = st.tuples(
        st.sampled_from([frames.MAGIC, b"MRC3", b""]), header, st.binary(max_size=200), st.binary(max_size=40)
    )
    return st.one_of(st.lists(st.binary(max_size=64), max_size=6), shaped.map(list))


def _no_unpickling(*args: object, **kwargs: object) -> None:
    raise AssertionError("pickle.loads was called on bytes from the network")


@settings(max_examples=300, deadline=None)
@given(parts=_parts(), keyed=st.booleans())
def test_arbitrary_bytes_are_refused_by_name_and_never_unpickled(parts, keyed):
    """Whatever arrives, the decoder refuses it with :class:`BadFrame` or gives the admission
    state machine a frame that it does not accept (a process that has confirmed no peer's run
    accepts nothing); nothing is unpickled on the way."""
    key = frames.derive_key(b"fuzz") if keyed else None
    gate = Admission(0, 2, 1, "", b"m" * frames.RUN_SIZE)
    with mock.patch.object(frames.pickle, "loads", _no_unpickling):
        try:
            frame = frames.open_frame(key, parts, 2)
        except frames.BadFrame:
            return
        assert key is None, "a frame without the secret's MAC passed"
        assert gate.admit(frame, formed=False).action in ("drop", "answer", "refuse")
