"""One upgraded connection: the read loop, hook dispatch and the close handshake.

The session runs in the greenlet that served the HTTP request, so hooks run
where the application's context lives (Flask's ``current_app`` and ``g``) and
one peer's hooks can only ever run one at a time, in arrival order.  Writing
is the outbox's job; this module only reads.
"""

from __future__ import annotations

import logging
import socket
import time
from time import perf_counter
from typing import TYPE_CHECKING, Any, Mapping, Optional

import gevent

from . import protocol as ws
from .hooks import CloseDetails, Hooks
from .message import Message
from .outbox import Outbox
from .peer import Peer

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("syncws")

OPEN, CLOSING, CLOSED = "open", "closing", "closed"

#: Settings a handler may override (``define_websocket_handler(..., ping_interval=...)``).
OVERRIDABLE = ("max_message_size", "ping_interval", "ping_timeout", "allowed_origins", "hooks_in_threads")

_PING = ws.encode_frame(ws.OP_PING, b"")
_EXPIRED_FLUSH = 1.0  # a peer that missed its pong gets this long to take our close frame
_READ_SIZE = 64 * 1024  # one socket read takes up to this much
_FAIR_BUDGET = 16  # units of work (a frame, a read, 4 KiB read) between fairness checks
_FAIR_SLICE = 0.002  # seconds one connection may hold the hub before it yields
_YIELD = 0.0001  # a timer, not sleep(0): gevent runs callbacks 50 at a time before it checks the clock
_MAX_QUEUED_PONGS = 16  # then only the most recent ping is answered (RFC 6455 §5.5.3)


class Session:
    def __init__(
        self,
        server: "Server",
        sock: socket.socket,
        rfile: Any,
        hooks: Hooks,
        request: Any,
        namespace: str,
        context: dict,
        protocol: Optional[str],
        remote_address: Optional[str],
        overrides: Optional[Mapping[str, Any]] = None,
    ) -> None:
        options = server.options
        overrides = overrides or {}
        self.max_message_size = overrides.get("max_message_size", options.max_message_size)
        self.ping_interval = overrides.get("ping_interval", options.ping_interval)
        self.ping_timeout = overrides.get("ping_timeout", options.ping_timeout)
        #: Run hooks in the server's thread pool (a blocking hook then blocks
        #: only this peer); the read loop waits for each, so order is kept.
        self.hooks_in_threads = bool(overrides.get("hooks_in_threads", options.hooks_in_threads))
        self.last_seen = time.monotonic()  # when the peer last sent us anything
        self._ping_sent_at: Optional[float] = None
        self._rfile = rfile
        self.server = server
        self.socket = sock
        self.protocol = protocol
        self.hooks = hooks
        self.state = OPEN
        self.close_timeout = options.close_timeout
        self._details: Optional[CloseDetails] = None
        self._abort_timer: Optional[gevent.Greenlet] = None
        self.parser = ws.FrameParser(self.max_message_size)
        self._queued_pongs = 0
        self.outbox = Outbox(sock, options.max_buffer_size, options.overflow, self._on_overflow, server.flusher)
        self.peer = Peer(self, request, namespace, context, remote_address)

    @property
    def closed(self) -> bool:
        return self.state != OPEN

    # -- running -----------------------------------------------------------
    def run(self) -> None:
        registry = self.server.registry
        registry.add_peer(self.peer)
        self.server.sessions.add(self)
        if self.server.stopping:
            # Accepted while the server began to stop: it would miss the 1001.
            self.close(ws.CLOSE_GOING_AWAY, "going away")
        keepalive = self.server.keepalive
        if keepalive is not None:
            keepalive.watch(self.ping_interval, self.ping_timeout)
        try:
            self._call("open", self.peer)
            self._read_loop()
        finally:
            self.state = CLOSED
            registry.remove(self.peer)
            self.server.sessions.discard(self)
            if self._abort_timer is not None:
                self._abort_timer.kill(block=False)
            self.outbox.stop()
            self._close_socket()
            details = self._details or CloseDetails(ws.CLOSE_ABNORMAL, "")
            self._call("close", self.peer, details)

    def _read_loop(self) -> None:
        """Read, parse and dispatch until the connection ends.

        One read takes what the socket has (up to 64 KiB); the parser turns it
        into frames, one per call.  Fairness: a flooding client always has
        bytes ready, so neither the read nor the parsing would ever give the
        hub back.  Every :data:`_FAIR_BUDGET` units of work the loop checks
        whether the hub has run since the last check; if it has not for
        :data:`_FAIR_SLICE` seconds, the loop sleeps on a tiny timer, which
        resumes it only after the hub has polled for I/O: other peers' reads
        and every pending write (pongs, close frames, the flusher) go on while
        one client floods.  A connection that blocks on its socket now and
        then never pays for this.
        """
        parser = self.parser
        read1 = self._rfile.read1
        loop = gevent.get_hub().loop
        seen = loop.iteration
        since = perf_counter()
        budget = _FAIR_BUDGET
        while True:
            if budget <= 0:
                budget = _FAIR_BUDGET
                if loop.iteration != seen:  # the hub ran (we blocked): a new slice begins
                    seen, since = loop.iteration, perf_counter()
                elif perf_counter() - since >= _FAIR_SLICE:
                    gevent.sleep(_YIELD)  # a timer: runs us again only after the hub polled for I/O
                    seen, since = loop.iteration, perf_counter()
            budget -= 1
            try:
                frame = parser.next_frame()
            except ws.ProtocolViolation as exc:
                self._report(exc)
                self._fail(exc.code, exc.reason)
                return
            if frame is None:
                if not parser.needs_data:
                    continue  # one frame of a fragmented message: count it, go on
                try:
                    data = read1(_READ_SIZE)
                except (OSError, ValueError):
                    data = b""
                if not data:
                    self._on_eof()
                    return
                self.last_seen = time.monotonic()
                parser.feed(data)
                budget -= len(data) >> 12  # a read costs by its size: unmasking and copying
                continue
            opcode = frame.opcode
            if opcode == ws.OP_CLOSE:
                self._on_close_frame(frame.payload)
                return
            if opcode == ws.OP_PING:
                self._pong(frame.payload)
            elif opcode == ws.OP_PONG:
                pass
            elif self.state == OPEN:  # data after we sent a close is discarded
                self._call("message", self.peer, Message(frame.payload, opcode == ws.OP_BINARY))

    def _on_eof(self) -> None:
        """The stream ended (EOF or reset) without a close frame.

        Details stay 1006 unless a close was already sent.  A client that only
        half-closed can still read: give what its hooks queued a short,
        bounded chance to go out.
        """
        if self.state == OPEN and self.outbox.buffered:
            self.outbox.put_final(b"")
            self.outbox.wait_flushed(min(self.close_timeout, 1.0))

    def _pong(self, payload: bytes) -> None:
        """Answer a ping, keeping what is owed to a client that pings faster than it reads bounded.

        Up to :data:`_MAX_QUEUED_PONGS` pongs queue in order behind other
        frames.  Past that (the client is not reading what we send), RFC 6455
        §5.5.3 lets us answer only the most recent ping: its pong takes the
        outbox's single urgent slot, replacing an older one not yet written.
        """
        outbox = self.outbox
        if not outbox.buffered:
            self._queued_pongs = 0
        frame = ws.encode_frame(ws.OP_PONG, payload)
        if self._queued_pongs < _MAX_QUEUED_PONGS:
            self._queued_pongs += 1
            outbox.put(frame)
        else:
            outbox.put_urgent(frame)

    # -- hooks -------------------------------------------------------------
    def _call(self, name: str, *args: Any) -> None:
        hook = getattr(self.hooks, name)
        if hook is None:
            return
        try:
            self._invoke(hook, *args)
        except (Exception, SystemExit) as exc:
            # SystemExit too: a sys.exit() in one hook must not end the
            # server's thread for every other peer.
            log.exception("syncws: %s hook raised for peer %s", name, self.peer.id)
            self._report(exc)
            self.close(ws.CLOSE_INTERNAL_ERROR, "internal error")

    def _invoke(self, hook: Any, *args: Any) -> Any:
        if self.hooks_in_threads:
            return self.server.run_in_thread(hook, *args)
        return hook(*args)

    def _report(self, error: BaseException) -> None:
        hook = self.hooks.error
        if hook is None:
            return
        try:
            self._invoke(hook, self.peer, error)
        except Exception:
            log.exception("syncws: error hook raised for peer %s", self.peer.id)

    # -- keepalive ---------------------------------------------------------
    def keepalive(self, now: float) -> None:
        """One keepalive tick (hub thread; see :mod:`syncws.keepalive`).

        After ``ping_interval`` seconds without a byte from the peer, send a
        ping.  If nothing at all (pong or any other frame) arrives within
        ``ping_timeout`` seconds of that ping, close the peer with 1011.  With
        ``ping_timeout=None`` pings are sent every ``ping_interval`` of silence
        and never time out (keeps NAT/proxy mappings alive).
        """
        interval = self.ping_interval
        if interval is None or self.state != OPEN:
            return
        sent = self._ping_sent_at
        if sent is not None and self.last_seen < sent:  # our last ping is unanswered
            if self.ping_timeout is not None:
                if now - sent >= self.ping_timeout:
                    self._expire()
                return
            since = sent
        else:
            since = self.last_seen
        if now - since >= interval:
            self._ping_sent_at = now
            self.outbox.put(_PING)

    def _expire(self) -> None:
        log.info(
            "syncws: peer %s did not answer a ping within %g s; closing it with 1011",
            self.peer.id, self.ping_timeout,
        )
        self.close(ws.CLOSE_INTERNAL_ERROR, "keepalive ping timeout")
        # It did not answer a ping, so waiting close_timeout for its close frame
        # is pointless: hang up as soon as our close frame is out (or after 1 s).
        if self._abort_timer is not None:
            self._abort_timer.kill(block=False)
        self._abort_timer = gevent.spawn(self._abort_when_flushed, min(_EXPIRED_FLUSH, self.close_timeout))

    def _abort_when_flushed(self, timeout: float) -> None:
        self.outbox.wait_flushed(timeout)
        self.abort()

    # -- closing -----------------------------------------------------------
    def close(self, code: int = ws.CLOSE_NORMAL, reason: str = "") -> None:
        """Start the close handshake (hub thread only)."""
        if self.state != OPEN:
            return
        if not isinstance(code, int) or not (code == 1000 or ws.is_valid_close_code(code)):
            raise ValueError(f"invalid close code {code!r}")
        self.state = CLOSING
        self._details = CloseDetails(code, reason)
        self.outbox.put_final(ws.encode_frame(ws.OP_CLOSE, ws.encode_close_payload(code, reason)))
        # The client has close_timeout seconds to answer before we hang up.
        self._abort_timer = gevent.spawn_later(self.close_timeout, self.abort)

    def _on_close_frame(self, payload: bytes) -> None:
        try:
            code, reason = ws.decode_close_payload(payload)
        except ws.ProtocolViolation as exc:
            self._report(exc)
            self._fail(exc.code, exc.reason)
            return
        if self.state == OPEN:
            self.state = CLOSING
            self._details = CloseDetails(code, reason)
            self.outbox.put_final(ws.encode_frame(ws.OP_CLOSE, ws.encode_close_payload(code)))
        # Either way the handshake is complete once our close frame is out.
        self.outbox.wait_flushed(self.close_timeout)

    def _fail(self, code: int, reason: str) -> None:
        """Close after a protocol error: the stream cannot be read any further."""
        self.close(code, reason)
        self.outbox.wait_flushed(self.close_timeout)

    def _on_overflow(self) -> None:
        log.warning("syncws: outbound buffer of peer %s overflowed; closing it", self.peer.id)
        self.close(ws.CLOSE_POLICY_VIOLATION, "outbound buffer overflow")

    def abort(self) -> None:
        """Hang up without a close frame; the read loop sees EOF and cleans up."""
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _close_socket(self) -> None:
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.socket.close()
        except OSError:
            pass

    def __repr__(self) -> str:
        return f"<Session {self.peer.id} {self.state}>"
