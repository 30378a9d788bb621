"""The server side of one WebSocket connection, as a state machine without I/O.

A :class:`Connection` is fed the bytes a socket returned
(:meth:`~Connection.receive_data`) and hands back events, one per call of
:meth:`~Connection.next_event`: a :class:`~syncws.protocol.message.Message`,
:class:`PingReceived`, :class:`PongReceived`, :class:`CloseReceived` or
:class:`Failed`.  Events that need an answer carry the bytes to send
(``pong``, ``reply``); the connection itself never writes, sleeps or reads a
clock.  Keepalive decisions take the current time as an argument, so every
rule below is tested with a fake clock and plain bytes
(``tests/protocol/test_connection.py``); the gevent driver
(:mod:`syncws.server.session`) only moves bytes and runs hooks.

The close handshake (RFC 6455 §5.5.1, §7):

* :meth:`~Connection.close` while :attr:`State.OPEN` returns our close frame
  and moves to :attr:`State.LOCAL_CLOSING`; data frames that still arrive are
  discarded (their hooks would see a peer that is already closing); the
  peer's close frame ends the handshake.
* A close frame from the peer while open moves to :attr:`State.REMOTE_CLOSING`
  and the event carries our answer, which echoes the peer's code (RFC 6455
  §5.5.1: "typically echoing the status code it received").
* A protocol violation produces :class:`Failed` with the close frame to send
  (1002, 1007 or 1009); nothing more can be read from the stream.
* :meth:`~Connection.connection_lost` ends in :attr:`State.CLOSED` whatever
  came before.  :attr:`~Connection.close_code` and
  :attr:`~Connection.close_reason` are what the ``close`` hook receives: the
  peer's when it started, ours when we did, 1006 and "" when the connection
  dropped without either.

Sending (:meth:`~Connection.send`, :meth:`~Connection.ping`): the connection
answers with the frame to write, or None once a close has begun (RFC 6455
§5.5.1: no data frame after the close frame).  A message's frame is built
once for every connection (:class:`~syncws.protocol.payload.Outgoing`); with
permessage-deflate agreed, the connection picks the compressed one, which is
shared too because the server keeps no compression context.  The driver
writes what it gets and nothing else.

Keepalive (:meth:`~Connection.keepalive`): after ``ping_interval`` seconds
without a byte from the peer, ping; if nothing at all (a pong or any other
byte) arrives within ``ping_timeout`` seconds of that ping, the answer is
:attr:`KeepaliveAction.EXPIRE` and the driver closes with 1011.  With
``ping_timeout=None`` pings go out every ``ping_interval`` of silence and
never expire (it keeps NAT and proxy mappings alive).  Any byte counts as an
answer, not only the matching pong: a peer that is busy sending is alive.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from ..base.errors import ConfigurationError, ProtocolError
from .deflate import Agreement, Inflater
from .frames import (
    CLOSE_ABNORMAL,
    CLOSE_NORMAL,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    FrameParser,
    decode_close_payload,
    encode_close_payload,
    encode_frame,
    is_valid_close_code,
)
from .message import Message
from .payload import Outgoing

PING = encode_frame(OP_PING, b"")  # the keepalive ping: empty, the same bytes every time


class State(enum.Enum):
    """Where a connection is; the closing states record who started the close."""

    OPEN = "open"
    LOCAL_CLOSING = "local closing"  # we sent a close frame and wait for the peer's
    REMOTE_CLOSING = "remote closing"  # the peer sent one first and we answered
    CLOSED = "closed"  # the transport is gone


#: Every change of :attr:`Connection.state`: (from, what causes it, to).  The docs'
#: state diagram is generated from this table (scripts/gen_docs), and a test drives a
#: connection through each row, so the table, the diagram and the code agree.
TRANSITIONS: tuple[tuple[State, str, State], ...] = (
    (State.OPEN, "close(): our close frame", State.LOCAL_CLOSING),
    (State.OPEN, "a violation: Failed, close frame 1002/1007/1009", State.LOCAL_CLOSING),
    (State.OPEN, "the peer's close frame: CloseReceived, our answer", State.REMOTE_CLOSING),
    (State.OPEN, "connection_lost(): 1006", State.CLOSED),
    (State.LOCAL_CLOSING, "connection_lost()", State.CLOSED),
    (State.REMOTE_CLOSING, "connection_lost()", State.CLOSED),
)


class KeepaliveAction(enum.Enum):
    """What :meth:`Connection.keepalive` asks the driver to do."""

    NONE = "none"
    PING = "ping"  # send :data:`PING`
    EXPIRE = "expire"  # the peer did not answer a ping in time: close with 1011


@dataclass(frozen=True)
class PingReceived:
    payload: bytes
    pong: bytes  # the pong frame that answers it


@dataclass(frozen=True)
class PongReceived:
    payload: bytes


@dataclass(frozen=True)
class CloseReceived:
    code: int | None  # None: the close frame had no payload
    reason: str | None
    reply: bytes | None  # our close frame; None when we had sent ours first


@dataclass(frozen=True)
class Failed:
    """The peer broke the protocol: send ``reply`` and read no further."""

    error: ProtocolError
    reply: bytes | None  # None when our close frame was already sent


Event = Message | PingReceived | PongReceived | CloseReceived | Failed


class Pending(enum.Enum):
    """What :meth:`Connection.next_event` returns when it has no event, as h11's ``NEED_DATA`` does.

    Two different answers, so the driver never has to ask the connection
    again which one a bare None meant.
    """

    NEED_DATA = "need data"  # feed bytes (receive_data) before asking again
    CONSUMED = "consumed"  # a frame was used up without an event (a fragment, data after our close): ask again


NEED_DATA: Final = Pending.NEED_DATA
CONSUMED: Final = Pending.CONSUMED
# Module-level names for the members the per-frame code compares with: on
# Python 3.11 reading ``State.OPEN`` costs about a function call (95 ns against
# 7 ns for a global, ``python3 -m timeit``), paid on every message sent and received.
_OPEN, _LOCAL_CLOSING, _REMOTE_CLOSING, _CLOSED = State.OPEN, State.LOCAL_CLOSING, State.REMOTE_CLOSING, State.CLOSED
_KEEPALIVE_NONE, _KEEPALIVE_PING, _KEEPALIVE_EXPIRE = KeepaliveAction.NONE, KeepaliveAction.PING, KeepaliveAction.EXPIRE


def check_ping(payload: bytes) -> None:
    """ConfigurationError (a ValueError) for a ping payload over 125 bytes (RFC 6455 §5.5).

    Called where a ping is asked for, before it crosses to the hub, as
    :func:`check_close` is.
    """
    if len(payload) > 125:
        raise ConfigurationError(f"a ping carries at most 125 bytes, not {len(payload)}")


def check_close(code: object, reason: object) -> None:
    """ConfigurationError (a ValueError) for a close code or reason that may not be sent.

    Called where a close is asked for, before it crosses to the hub, so the
    caller gets the error in every thread.
    """
    if not isinstance(code, int) or isinstance(code, bool) or not is_valid_close_code(code):
        raise ConfigurationError(
            f"invalid close code {code!r}: use 1000-1003, 1007-1014 or 3000-4999 (an application's own)"
        )
    if not isinstance(reason, str):
        raise ConfigurationError(f"a close reason is a str, not {type(reason).__name__}")


class Connection:
    """One WebSocket connection, server side, after the 101 (see the module docstring)."""

    __slots__ = (
        "_input_done",
        "_ping_sent_at",
        "agreement",
        "close_code",
        "close_reason",
        "compression_threshold",
        "last_seen",
        "parser",
        "ping_interval",
        "ping_timeout",
        "state",
    )

    def __init__(
        self,
        max_message_size: int | None = None,
        *,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
        now: float = 0.0,
        agreement: Agreement | None = None,
        compression_threshold: int = 128,
    ) -> None:
        #: The permessage-deflate parameters agreed in the handshake, or None.
        self.agreement = agreement
        self.compression_threshold = compression_threshold
        self.parser = FrameParser(max_message_size, Inflater(agreement) if agreement is not None else None)
        self.state = _OPEN
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.last_seen = now  # when the peer last sent us anything
        self._ping_sent_at: float | None = None
        self._input_done = False  # a close frame or a violation ended what we read

    @property
    def open(self) -> bool:
        return self.state is _OPEN

    # -- receiving -----------------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the peer, received at ``now`` (any clock, as long as it is one clock)."""
        self.last_seen = now
        if not self._input_done:
            self.parser.feed(data)

    def next_event(self) -> Event | Pending:
        """The next event, or what to do first: :data:`NEED_DATA` or :data:`CONSUMED`.

        At most one frame is parsed per call, so the driver bounds the work
        one client gets before others are served.  Data messages that arrive
        after our close frame are discarded (:data:`CONSUMED`).  Once the
        peer's close frame or a violation has ended the input, the answer is
        always :data:`NEED_DATA`: no event will come any more, whatever is fed.
        """
        if self._input_done:
            return NEED_DATA
        try:
            frame = self.parser.next_frame()
        except ProtocolError as exc:
            return self._fail(exc)
        if frame is None:
            return NEED_DATA if self.parser.needs_data else CONSUMED
        opcode = frame.opcode
        if opcode == OP_PING:
            return PingReceived(frame.payload, encode_frame(OP_PONG, frame.payload))
        if opcode == OP_PONG:
            return PongReceived(frame.payload)
        if opcode == OP_CLOSE:
            return self._close_received(frame.payload)
        if self.state is not _OPEN:
            return CONSUMED
        return Message(frame.payload, opcode == OP_BINARY)

    def _close_received(self, payload: bytes) -> Event:
        try:
            code, reason = decode_close_payload(payload)
        except ProtocolError as exc:
            return self._fail(exc)
        self._input_done = True  # RFC 6455 §5.5.1: nothing follows a close frame
        if self.state is _OPEN:
            self.state = _REMOTE_CLOSING
            self.close_code, self.close_reason = code, reason
            return CloseReceived(code, reason, encode_frame(OP_CLOSE, encode_close_payload(code)))
        return CloseReceived(code, reason, None)

    def _fail(self, error: ProtocolError) -> Failed:
        self._input_done = True  # the stream cannot be parsed any further
        # A verdict on the peer's bytes, not a bug: its traceback (into the parser)
        # would tie the frames that handle the event, and their session, to it.
        error.__traceback__ = None
        return Failed(error, self.close(error.code, error.reason))

    # -- sending ---------------------------------------------------------------------
    def send(self, outgoing: Outgoing) -> bytes | None:
        """The frame that carries ``outgoing`` here, or None once a close has begun (nothing is sent).

        With permessage-deflate, compressed when ``outgoing.compress`` says so
        or, by default, from ``compression_threshold`` bytes on, and only when
        it comes out smaller (:meth:`Outgoing.frame_for`).
        """
        if self.state is not _OPEN:
            return None
        agreement = self.agreement
        return outgoing.frame if agreement is None else outgoing.frame_for(agreement, self.compression_threshold)

    def ping(self, payload: bytes = b"") -> bytes | None:
        """A ping frame carrying ``payload`` (:func:`check_ping`), or None once a close has begun."""
        check_ping(payload)
        return encode_frame(OP_PING, payload) if self.state is _OPEN else None

    # -- closing ---------------------------------------------------------------------
    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> bytes | None:
        """Start the close handshake: our close frame, or None when it has begun already.

        ConfigurationError (a ValueError) for a code that may not be sent.
        """
        check_close(code, reason)
        if self.state is not _OPEN:
            return None
        self.state = _LOCAL_CLOSING
        self.close_code, self.close_reason = code, reason
        return encode_frame(OP_CLOSE, encode_close_payload(code, reason))

    def connection_lost(self) -> None:
        """The transport is gone (EOF, reset, or we hung up); what the parser holds is let go."""
        if self.close_code is None and self.state is _OPEN:
            self.close_code, self.close_reason = CLOSE_ABNORMAL, ""
        self.state = _CLOSED
        self.parser.release()

    # -- keepalive -------------------------------------------------------------------
    def keepalive(self, now: float) -> KeepaliveAction:
        """Whether to ping, or give up on the peer, at time ``now``."""
        interval = self.ping_interval
        if interval is None or self.state is not _OPEN:
            return _KEEPALIVE_NONE
        sent = self._ping_sent_at
        if sent is not None and self.last_seen < sent:  # our last ping is unanswered
            if self.ping_timeout is not None:
                if now - sent >= self.ping_timeout:
                    return _KEEPALIVE_EXPIRE
                return _KEEPALIVE_NONE
            since = sent
        else:
            since = self.last_seen
        if now - since >= interval:
            self._ping_sent_at = now
            return _KEEPALIVE_PING
        return _KEEPALIVE_NONE

    def __repr__(self) -> str:
        return f"<Connection {self.state.value}>"
