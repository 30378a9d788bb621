"""The sans-I/O WebSocket connection: bytes in, events and bytes out, a fake clock.

No socket, no gevent: every close and keepalive rule of
:mod:`syncws.protocol.connection` is exercised with plain bytes and times.
"""

from __future__ import annotations

import struct

import pytest

from syncws import ConfigurationError, Message, ProtocolError
from syncws.protocol.connection import (
    CONSUMED,
    NEED_DATA,
    PING,
    CloseReceived,
    Connection,
    Failed,
    KeepaliveAction,
    PingReceived,
    PongReceived,
    State,
)
from syncws.protocol.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    CloseCode,
    Opcode,
    encode_frame,
)

MASK = b"\x37\xfa\x21\x3d"


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """A masked frame, as a client sends it."""
    return encode_frame(opcode, payload, fin=fin, mask=MASK)


def close_frame(code: int | None = None, reason: str = "") -> bytes:
    payload = b"" if code is None else struct.pack("!H", code) + reason.encode()
    return frame(OP_CLOSE, payload)


def events(connection: Connection, data: bytes = b"", now: float = 0.0) -> list:
    """Feed ``data`` and collect events until the connection wants more bytes."""
    if data:
        connection.receive_data(data, now)
    found: list[object] = []
    while True:
        event = connection.next_event()
        if event is NEED_DATA:
            return found
        if event is not CONSUMED:
            found.append(event)


def unmasked(data: bytes) -> tuple[int, bytes]:
    """(opcode, payload) of one server frame."""
    assert data[1] & 0x80 == 0, "servers never mask"
    length = data[1] & 0x7F
    assert length < 126
    return data[0] & 0x0F, data[2 : 2 + length]


# -- enums ----------------------------------------------------------------------------


def test_opcodes_and_close_codes_are_int_enums():
    assert Opcode.TEXT == 1 and OP_TEXT is Opcode.TEXT
    assert CloseCode.TOO_BIG == 1009 and isinstance(CloseCode.NORMAL, int)
    assert Opcode(0xA) is Opcode.PONG


# -- data ------------------------------------------------------------------------------


def test_text_and_binary_messages_become_message_events():
    connection = Connection()
    found = events(connection, frame(OP_TEXT, "héllo".encode()) + frame(OP_BINARY, b"\x00\xff"))
    assert [type(e) for e in found] == [Message, Message]
    assert found[0].text() == "héllo" and not found[0].is_binary
    assert found[1].bytes() == b"\x00\xff" and found[1].is_binary


def test_a_fragmented_message_is_one_event_and_a_ping_between_fragments_comes_first():
    connection = Connection()
    data = frame(OP_TEXT, b"one ", fin=False) + frame(OP_PING, b"?") + frame(OP_CONTINUATION, b"two")
    found = events(connection, data)
    assert isinstance(found[0], PingReceived) and found[0].payload == b"?"
    assert unmasked(found[0].pong) == (OP_PONG, b"?")
    assert isinstance(found[1], Message) and found[1].text() == "one two"


def test_bytes_may_arrive_one_at_a_time():
    connection = Connection()
    data = frame(OP_TEXT, b"split")
    found = []
    for i in range(len(data)):
        found += events(connection, data[i : i + 1], now=float(i))
    assert [m.text() for m in found] == ["split"]
    assert connection.last_seen == float(len(data) - 1)


def test_a_pong_is_an_event_and_needs_no_answer():
    assert events(Connection(), frame(OP_PONG, b"x")) == [PongReceived(b"x")]


# -- the close handshake: the peer starts --------------------------------------------------


def test_a_close_from_the_peer_is_echoed_and_recorded():
    connection = Connection()
    [event] = events(connection, close_frame(1001, "bye"))
    assert event == CloseReceived(1001, "bye", event.reply)
    assert unmasked(event.reply) == (OP_CLOSE, struct.pack("!H", 1001))  # the code, no reason
    assert connection.state is State.REMOTE_CLOSING
    assert (connection.close_code, connection.close_reason) == (1001, "bye")
    assert connection.close(1000) is None  # the handshake has begun: nothing more to send
    connection.connection_lost()
    assert connection.state is State.CLOSED
    assert (connection.close_code, connection.close_reason) == (1001, "bye")


def test_an_empty_close_is_answered_with_an_empty_close():
    connection = Connection()
    [event] = events(connection, close_frame())
    assert (event.code, event.reason) == (None, None)
    assert unmasked(event.reply) == (OP_CLOSE, b"")


# -- the close handshake: we start ----------------------------------------------------------


def test_our_close_then_theirs():
    connection = Connection()
    sent = connection.close(4000, "done")
    assert unmasked(sent) == (OP_CLOSE, struct.pack("!H", 4000) + b"done")
    assert connection.state is State.LOCAL_CLOSING and not connection.open
    assert connection.close(1000) is None  # only once
    # Data that crossed our close frame is discarded; control frames still count.
    found = events(connection, frame(OP_TEXT, b"late") + frame(OP_PING) + close_frame(4000))
    assert isinstance(found[0], PingReceived)
    assert found[1] == CloseReceived(4000, "", None)  # no second close frame from us
    connection.connection_lost()
    assert (connection.close_code, connection.close_reason) == (4000, "done")


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1016, 2999, 5000, True, "1000", None])
def test_codes_that_may_not_be_sent_are_refused(code):
    connection = Connection()
    with pytest.raises(ConfigurationError):
        connection.close(code)
    assert connection.open  # nothing happened


def test_a_dropped_connection_is_1006():
    connection = Connection()
    connection.connection_lost()
    assert connection.state is State.CLOSED
    assert (connection.close_code, connection.close_reason) == (CloseCode.ABNORMAL, "")


# -- protocol violations ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, code",
    [
        (frame(OP_CLOSE, b"\x03"), 1002),  # a 1-byte close payload
        (close_frame(1005), 1002),  # a code that is never sent
        (frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007),  # a reason that is not UTF-8
        (frame(OP_TEXT, b"\xff"), 1007),
        (encode_frame(OP_TEXT, b"unmasked"), 1002),
        (frame(OP_CONTINUATION, b"x"), 1002),
        (frame(OP_TEXT, b"x" * 11), 1009),
    ],
)
def test_a_violation_fails_the_connection_with_the_right_code(data, code):
    connection = Connection(max_message_size=10)
    [event] = events(connection, data)
    assert isinstance(event, Failed)
    assert isinstance(event.error, ProtocolError) and event.error.code == code
    assert event.error.__traceback__ is None  # no frames (and the session handling them) tied to the event
    assert unmasked(event.reply)[0] == OP_CLOSE
    assert struct.unpack("!H", unmasked(event.reply)[1][:2])[0] == code
    assert connection.state is State.LOCAL_CLOSING
    assert connection.close_code == code


def test_a_violation_after_our_close_sends_nothing_more():
    connection = Connection()
    connection.close(1000)
    [event] = events(connection, frame(OP_CLOSE, b"\x03"))
    assert isinstance(event, Failed) and event.reply is None
    assert connection.close_code == 1000


# -- keepalive, with a fake clock -------------------------------------------------------------


def test_no_interval_never_pings():
    connection = Connection(ping_interval=None, ping_timeout=5)
    assert connection.keepalive(1e9) is KeepaliveAction.NONE


def test_silence_gets_a_ping_and_a_missed_pong_expires():
    connection = Connection(ping_interval=20, ping_timeout=10, now=100.0)
    assert connection.keepalive(119.9) is KeepaliveAction.NONE
    assert connection.keepalive(120.0) is KeepaliveAction.PING
    assert connection.keepalive(125.0) is KeepaliveAction.NONE  # waiting for the answer
    assert connection.keepalive(129.9) is KeepaliveAction.NONE
    assert connection.keepalive(130.0) is KeepaliveAction.EXPIRE
    assert unmasked(PING) == (OP_PING, b"")


def test_any_byte_answers_a_ping():
    connection = Connection(ping_interval=20, ping_timeout=10, now=0.0)
    assert connection.keepalive(20.0) is KeepaliveAction.PING
    events(connection, frame(OP_TEXT, b"busy, not a pong"), now=25.0)
    assert connection.keepalive(31.0) is KeepaliveAction.NONE  # no expiry: it spoke
    assert connection.keepalive(44.9) is KeepaliveAction.NONE
    assert connection.keepalive(45.0) is KeepaliveAction.PING  # 20 s after it last spoke


def test_without_a_timeout_pings_repeat_and_never_expire():
    connection = Connection(ping_interval=5, ping_timeout=None, now=0.0)
    assert connection.keepalive(5.0) is KeepaliveAction.PING
    assert connection.keepalive(9.0) is KeepaliveAction.NONE
    assert connection.keepalive(10.0) is KeepaliveAction.PING  # every interval of silence
    assert connection.keepalive(1000.0) is KeepaliveAction.PING


def test_a_closing_connection_is_not_pinged():
    connection = Connection(ping_interval=1, ping_timeout=1, now=0.0)
    connection.close(1000)
    assert connection.keepalive(100.0) is KeepaliveAction.NONE


def test_repr_shows_the_state():
    connection = Connection()
    assert repr(connection) == "<Connection open>"
    connection.close()
    assert repr(connection) == "<Connection local closing>"


def test_nothing_is_read_after_a_close_frame_or_a_violation():
    for ending in (close_frame(1000), frame(OP_CLOSE, b"\x03")):
        connection = Connection()
        found = events(connection, ending + frame(OP_TEXT, b"after"))
        assert len(found) == 1 and connection.next_event() is NEED_DATA
        before = connection.parser.buffered
        connection.receive_data(frame(OP_TEXT, b"more"), 1.0)
        assert connection.next_event() is NEED_DATA
        assert connection.parser.buffered == before  # not even buffered


def test_next_event_says_which_wait_it_is():
    """NEED_DATA: feed bytes; CONSUMED: a frame was used up without an event, ask again."""
    connection = Connection()
    assert connection.next_event() is NEED_DATA
    connection.receive_data(frame(OP_TEXT, b"he", fin=False) + frame(OP_CONTINUATION, b"llo"), 0.0)
    assert connection.next_event() is CONSUMED  # the first fragment
    assert connection.next_event().text() == "hello"
    assert connection.next_event() is NEED_DATA
    connection.close(1000)
    connection.receive_data(frame(OP_TEXT, b"after our close"), 0.0)
    assert connection.next_event() is CONSUMED  # discarded: we are closing
    assert connection.next_event() is NEED_DATA


def test_the_transitions_table_is_what_the_connection_does():
    """Each row of TRANSITIONS (the docs' state diagram) happens, and nothing else does."""
    from syncws.protocol.connection import TRANSITIONS

    from ..support.states import Transitions

    transitions = Transitions()
    step = transitions.step
    closing = Connection()
    step(closing, lambda c: c.close(1000))
    step(closing, lambda c: c.connection_lost())
    violated = Connection()
    step(violated, lambda c: events(c, frame(3, b"")))  # a reserved opcode: 1002
    answered = Connection()
    step(answered, lambda c: events(c, close_frame(1000)))
    step(answered, lambda c: c.connection_lost())
    lost = Connection()
    step(lost, lambda c: c.connection_lost())
    assert transitions.seen == Transitions.of(TRANSITIONS)
    assert violated.close_code == 1002


def test_the_parser_transitions_table_is_what_the_parser_does():
    from syncws.protocol.frames import PARSER_TRANSITIONS, FrameParser

    from ..support.states import Transitions

    parser = FrameParser(None)
    data = frame(OP_TEXT, b"x" * 20)
    transitions = Transitions()
    transitions.step(parser, lambda p: p.feed(data[:6]) or p.next_frame())  # the header: 2 + 4 mask bytes
    transitions.step(parser, lambda p: p.feed(data[6:]) or p.next_frame())  # the payload: a frame
    assert transitions.seen == Transitions.of(PARSER_TRANSITIONS)


# -- sending: the connection decides what may go out ------------------------------------------
def test_send_gives_the_frame_while_open_and_nothing_once_a_close_began():
    from syncws.protocol.payload import Outgoing

    connection = Connection()
    outgoing = Outgoing("hello")
    assert connection.send(outgoing) == encode_frame(OP_TEXT, b"hello") == outgoing.frame
    assert connection.ping(b"are you there") == encode_frame(OP_PING, b"are you there")
    connection.close(1000)
    assert connection.send(outgoing) is None  # RFC 6455 §5.5.1: no data after our close frame
    assert connection.ping() is None
    answered = Connection()
    events(answered, close_frame(1001))
    assert answered.send(outgoing) is None  # the peer's close came first: nothing more either


def test_with_permessage_deflate_the_connection_picks_the_compressed_frame():
    from syncws.protocol.deflate import negotiate, parse_extensions
    from syncws.protocol.payload import Outgoing

    agreement = negotiate(parse_extensions(["permessage-deflate"]), 12)
    assert agreement is not None
    connection = Connection(agreement=agreement, compression_threshold=100)
    small, large = Outgoing("x" * 50), Outgoing("x" * 5000)
    assert connection.send(small) == small.frame  # under the threshold: as it is
    frame = connection.send(large)
    assert frame is not None and frame[0] & 0x40 and len(frame) < len(large.frame)  # RSV1: compressed
    assert connection.send(Outgoing("y" * 5000, compress=False)) == Outgoing("y" * 5000).frame


def test_a_ping_over_125_bytes_is_refused():
    import pytest

    from syncws import ConfigurationError

    with pytest.raises(ConfigurationError, match="125 bytes"):
        Connection().ping(b"x" * 126)
