"""The gevent driver of one WebSocket connection: socket in, hooks out, outbox for writes.

The rules of the protocol (frames, the close handshake, keepalive decisions)
live in :class:`syncws.protocol.connection.Connection`, which never does I/O.
This module only moves bytes and runs hooks: it reads the socket, feeds the
connection, dispatches the events it returns to the hooks, and hands bytes to
send to the peer's :class:`~syncws.server.outbox.Outbox`.  Timers (the close
timeout, the hang-up after a missed pong) are gevent's.

The session runs in the greenlet that served the HTTP request, so hooks run
where the application's context lives (Flask's ``current_app`` and ``g``) and
one peer's hooks can only ever run one at a time, in arrival order.
"""

from __future__ import annotations

import contextvars
import logging
import socket
import time
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

import gevent

from ..base.options import ServerOptions
from ..base.threads import hub_only
from ..protocol.connection import (
    CONSUMED,
    NEED_DATA,
    PING,
    CloseReceived,
    Connection,
    Event,
    Failed,
    KeepaliveAction,
    PingReceived,
    PongReceived,
    State,
)
from ..protocol.deflate import Agreement
from ..protocol.frames import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_NORMAL, CLOSE_POLICY_VIOLATION, CloseCode
from ..protocol.limits import TokenBucket
from ..protocol.message import Message
from .hooks import CloseDetails, Hooks
from .outbox import Outbox, raw_socket
from .peer import Peer
from .runtime import Runtime

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from werkzeug.wrappers import Request

log = logging.getLogger("syncws")

_EXPIRED_FLUSH = 1.0  # a peer that missed its pong gets this long to take our close frame
_READ_SIZE = 64 * 1024  # one socket read takes up to this much
_OPEN = State.OPEN  # globals, not enum members read per call: see protocol/connection.py
_KEEPALIVE_PING, _KEEPALIVE_EXPIRE = KeepaliveAction.PING, KeepaliveAction.EXPIRE
_READY_STATES = {State.OPEN: 1, State.LOCAL_CLOSING: 2, State.REMOTE_CLOSING: 2, State.CLOSED: 3}
_FAIR_BUDGET = 16  # units of work (a frame, a read, 4 KiB read or inflated) between fairness checks
_FAIR_SLICE = 0.002  # seconds one connection may hold the hub before it yields
_YIELD = 0.0001  # a timer, not sleep(0): gevent runs callbacks 50 at a time before it checks the clock
_MAX_QUEUED_PONGS = 16  # then only the most recent ping is answered (RFC 6455 §5.5.3)


def _raw_reader(sock: socket.socket) -> tuple[Callable[[int], bytes], Callable[[], None]] | None:
    """The socket's own non-blocking ``recv`` and a call that waits until it is readable; None where wrong.

    Both are what gevent's ``recv`` uses inside (:func:`~syncws.server.outbox.raw_socket`):
    calling them directly saves a Python frame per read (see
    :meth:`_Input.read`).  A TLS socket gets None, and gevent's ``recv``: it
    may hold decrypted bytes that its file descriptor does not show as
    readable.
    """
    raw = raw_socket(sock)
    if raw is None:
        return None
    plain: Any = sock  # (gevent has no types)
    wait, event = plain._wait, plain._read_event

    def wait_readable() -> None:
        # A Python function, not functools.partial: a greenlet parked under a
        # C call saves a deeper C stack, 0.2 KiB per idle peer (scripts/profile memory).
        wait(event)

    return raw.recv, wait_readable


class _Input:
    """The read side of a session: reads the socket when the connection needs bytes, and paces one client.

    Fairness: a flooding client always has bytes ready, so neither the read
    nor the parsing would ever give the hub back.  Every
    :data:`_FAIR_BUDGET` units of work (a frame, a read, 4 KiB read or
    inflated) the read loop checks, through :meth:`rest`, whether the hub has run since the last
    check; if it has not for :data:`_FAIR_SLICE` seconds, it sleeps on a
    tiny timer, which resumes it only after the hub has polled for I/O:
    other peers' reads and every pending write (pongs, close frames, the
    flusher) go on while one client floods.  A connection that blocks on its
    socket now and then never pays for this.

    Memory: the socket is read here (gevent's ``recv`` tries, then waits for
    readability without a buffer); the HTTP handler's buffered reader was
    closed by :meth:`Transport.accept <syncws.server.http.Transport.accept>`,
    which handed over what it had.

    Syscalls: gevent's ``recv`` tries first and waits only when the try
    fails, so a peer that sends one message at a time would cost two
    ``recv`` calls per message, one of them failing.  After a read that
    drained the socket, :meth:`read` waits for readability first and then
    reads once, with the socket's own ``recv`` (:func:`_raw_reader`).
    """

    __slots__ = ("_connection", "_drained", "_loop", "_recv", "_seen", "_since", "_wait")

    def __init__(self, sock: socket.socket, connection: Connection, drained: bool) -> None:
        self._connection = connection
        raw = _raw_reader(sock)
        self._recv: Callable[[int], bytes] = sock.recv if raw is None else raw[0]
        self._wait = None if raw is None else raw[1]
        self._drained = drained  # the last read found the socket empty: wait before the next
        self._loop = gevent.get_hub().loop
        self._seen = self._loop.iteration
        self._since = perf_counter()

    def rest(self) -> None:
        """The budget is spent: yield to the hub if this client has held it for :data:`_FAIR_SLICE`.

        The loop counts the budget itself (a frame is one unit, a read or
        what was inflated one per 4 KiB): a call per frame cost the echo 3-4%.
        """
        loop = self._loop
        if loop.iteration != self._seen:  # the hub ran (we blocked): a new slice begins
            self._seen, self._since = loop.iteration, perf_counter()
        elif perf_counter() - self._since >= _FAIR_SLICE:
            gevent.sleep(_YIELD)  # a timer: runs us again only after the hub polled for I/O
            self._seen, self._since = loop.iteration, perf_counter()

    def read(self) -> int:
        """Read what the socket has into the connection: what it cost in budget units, -1 at the end of the stream."""
        try:
            if self._drained and self._wait is not None:
                self._wait()
            data = self._recv(_READ_SIZE)
        except BlockingIOError:  # the socket's own recv: nothing yet, so wait first next time
            if self._wait is None:
                return -1  # gevent's recv on a socket someone made non-blocking: as any error, not a spin
            self._drained = True
            return 0
        except (OSError, ValueError):
            return -1
        if not data:
            return -1
        size = len(data)
        self._drained = size < _READ_SIZE
        self._connection.receive_data(data, time.monotonic())
        return size >> 12  # a read costs by its size: unmasking and copying (data is not kept: 64 KiB per idle peer)


class Session:
    #: The upgrade's span context when tracing (base/tracing.py): the parent of this connection's
    #: spans.  A class default: a connection that is not traced stores nothing.
    trace_context: Context | None = None

    def __init__(
        self,
        runtime: Runtime,
        sock: socket.socket,
        received: bytes,
        hooks: Hooks,
        request: Request,
        namespace: str,
        context: dict[str, Any],
        protocol: str | None,
        remote_address: str | None,
        options: ServerOptions | None = None,
        agreement: Agreement | None = None,
    ) -> None:
        # options: the server's with the handler's overrides (WebSocketHandler.options_for).
        options = options or runtime.options
        self.connection = Connection(
            options.max_message_size,
            ping_interval=options.ping_interval,
            ping_timeout=options.ping_timeout,
            now=time.monotonic(),
            agreement=agreement,
            compression_threshold=options.compression_threshold,
        )
        #: Run hooks in the server's thread pool (a blocking hook then blocks
        #: only this peer); the read loop waits for each, so order is kept.
        self.hooks_in_threads = runtime.hooks_threaded(options)
        #: The context variables hooks run with in the pool: the view's, when
        #: the view ran in a pool thread (None: the session greenlet's).
        self.context: contextvars.Context | None = None
        self._received = received  # bytes that came with the upgrade request, after its head
        self.runtime = runtime
        self.socket = sock
        #: The subprotocol agreed in the handshake, or "" (as the browser's ``WebSocket.protocol``).
        self.protocol = protocol or ""
        self.hooks = hooks
        self.close_timeout = options.close_timeout
        self._abort_timer: gevent.Greenlet[..., Any] | None = None
        self._queued_pongs = 0
        #: The ``open`` hook has returned (or raised): hooks of other peers may run in
        #: other threads, so a test waits for this before it relies on what open did.
        self.opened = False
        on_drain = self._on_drain if hooks.drain is not None else None
        self.outbox = Outbox(
            sock, options.max_buffer_size, options.overflow, self._on_overflow, runtime.flusher, on_drain
        )
        self.peer = Peer(self, request, namespace, context, remote_address)
        self.started = time.monotonic()  # for the connection's log line (its duration)
        self._set_rate_limits(options, self.started)

    def _set_rate_limits(self, options: ServerOptions, now: float) -> None:
        """Token buckets checked before the message hook; never a sleep."""
        rate, rate_bytes = options.rate_limit, options.rate_limit_bytes
        self._message_bucket = TokenBucket(rate[0], rate[1], now) if rate else None
        self._byte_bucket = TokenBucket(rate_bytes[0], rate_bytes[1], now) if rate_bytes else None
        self._rate_policy = options.rate_limit_policy
        self._limited = self._message_bucket is not None or self._byte_bucket is not None
        #: Messages over this peer's rate limit (dropped, or the one that closed it).
        self.rate_limited = 0

    @property
    def deflate(self) -> Agreement | None:
        """The permessage-deflate parameters agreed in the handshake, or None."""
        return self.connection.agreement

    @property
    def state(self) -> State:
        return self.connection.state

    @property
    def closed(self) -> bool:
        return self.connection.state is not _OPEN

    @property
    def ready_state(self) -> int:
        """As the browser's ``WebSocket.readyState``: 1 open, 2 closing, 3 closed."""
        return _READY_STATES[self.connection.state]

    @property
    def extensions(self) -> str:
        """The extensions agreed in the handshake (the 101's ``Sec-WebSocket-Extensions``), or ""."""
        return self.deflate.header if self.deflate is not None else ""

    @property
    def url(self) -> str:
        """The request URL in its ``ws://`` or ``wss://`` form."""
        return _ws_url(self.peer.request)

    def _on_drain(self) -> None:
        # From the flusher or the writer: the hook runs in a greenlet of its
        # own, so a slow one delays neither other peers nor the writer.
        gevent.spawn(self._call, "drain", self.peer)

    # -- running -----------------------------------------------------------
    def run(self) -> None:
        runtime = self.runtime
        runtime.registry.add_peer(self.peer)
        runtime.sessions.add(self)
        runtime.counters.websocket_opened += 1
        if runtime.stopping:
            # Accepted while the server began to stop: it would miss the 1001 (a drain's 1012).
            if runtime.draining:
                self.close(CloseCode.SERVICE_RESTART, "service restart")
            else:
                self.close(CLOSE_GOING_AWAY, "going away")
        keepalive = runtime.keepalive
        if keepalive is not None:
            keepalive.watch(self.connection.ping_interval, self.connection.ping_timeout)
        try:
            self._call("open", self.peer)
            self.opened = True
            self._read_loop()
        finally:
            self.connection.connection_lost()
            runtime.registry.remove(self.peer)
            runtime.sessions.discard(self)
            runtime.release(self.peer.remote_address)  # the slot the handshake took (connection caps)
            runtime.counters.overflow_drops += self.outbox.dropped if self.outbox.policy == "drop" else 0
            if self._abort_timer is not None:
                self._abort_timer.kill(block=False)
            self.outbox.stop()
            self._close_socket()
            connection = self.connection
            peer = self.peer
            if runtime.logs_ends:
                runtime.log_end(
                    "websocket",
                    peer.id,
                    getattr(peer.request, "path", peer.namespace),
                    peer.remote_address,
                    self.started,
                    user=peer.user,
                    code=connection.close_code,
                    reason=connection.close_reason,
                )
            self._call("close", peer, CloseDetails(connection.close_code, connection.close_reason))
            self._detach()

    def _detach(self) -> None:
        """Leave the peer a link to what is left of this session, and nothing that refers back.

        Peer and session refer to each other, and the request to itself
        through its environ: cycles that only the cycle collector frees,
        with everything hanging off them.  The peer an app keeps answers as
        a closed one; the session is freed by reference counting when its
        greenlet ends.
        """
        peer = self.peer
        peer._session = _EndedSession(self)
        environ = getattr(peer.request, "environ", None)
        if isinstance(environ, dict) and environ.get("werkzeug.request") is peer.request:
            del environ["werkzeug.request"]

    def _read_loop(self) -> None:
        """Feed the connection and dispatch its events until the connection ends.

        The reading and the fairness towards other connections are
        :class:`_Input`'s; the events are :meth:`_dispatch`'s.  The
        connection parses one frame per :meth:`~Connection.next_event`, so
        each frame is one unit of work for the fairness budget.
        """
        connection = self.connection
        next_event = connection.next_event
        received, self._received = self._received, b""
        # Nothing came with the upgrade: its non-blocking read found the socket
        # empty (Transport.accept), so the first read waits instead of failing.
        drained = not received
        if received:
            connection.receive_data(received, time.monotonic())
        del received  # nothing read is kept referenced while this peer idles
        source = _Input(self.socket, connection, drained)  # (no bound methods kept in locals: memory per idle peer)
        parser = connection.parser
        inflated = parser.inflated
        budget = _FAIR_BUDGET
        while True:
            if budget <= 0:
                source.rest()
                budget = _FAIR_BUDGET
            budget -= 1
            event = next_event()
            if parser.inflated != inflated:  # inflating costs by its output, like a read by its size
                budget -= (parser.inflated - inflated) >> 12
                inflated = parser.inflated
            # ``is`` against globals, not ``match``: its ``case Pending.CONSUMED``
            # reads the enum member from its class on every event (slow on 3.11).
            if event is CONSUMED:
                continue
            if event is NEED_DATA:
                cost = source.read()
                if cost < 0:
                    self._on_eof()
                    return
                budget -= cost
                continue
            ended = self._dispatch(event)
            del event  # the message is not kept referenced (up to 64 KiB) while this peer idles
            if ended:
                return

    def _dispatch(self, event: Event) -> bool:
        """Run what ``event`` calls for; True when the input is over (a close frame, a violation)."""
        match event:
            case Message():
                counters = self.runtime.counters
                counters.messages_in += 1
                counters.bytes_in += len(event)
                if not self._limited or self._within_rate(event):
                    hook = self.hooks.message
                    if hook is None:
                        pass
                    elif self.hooks_in_threads:
                        self._call("message", self.peer, event)
                    else:  # what _call does, without two calls per message
                        try:
                            hook(self.peer, event)
                        except (Exception, SystemExit) as exc:
                            self._hook_raised("message", exc)
            case PingReceived(payload=payload, pong=pong):
                self._pong(pong)
                if self.hooks.ping is not None:
                    self._call("ping", self.peer, payload)
            case PongReceived(payload=payload):
                # (Receiving it already counted as an answer to keepalive: last_seen.)
                if self.hooks.pong is not None:
                    self._call("pong", self.peer, payload)
            case CloseReceived(reply=reply):
                if reply is not None:
                    self.outbox.put_final(reply)
                # Either way the handshake is complete once our close frame is out.
                self.outbox.wait_flushed(self.close_timeout)
                return True
            case Failed(error=error, reply=reply):
                self._report(error)
                self._send_close(reply)
                self.outbox.wait_flushed(self.close_timeout)
                return True
        return False

    def _within_rate(self, message: Message) -> bool:
        """Take this message's tokens; over the limit, apply the policy (and say no)."""
        now = time.monotonic()
        messages, sizes = self._message_bucket, self._byte_bucket
        allowed = messages is None or messages.take(1, now)
        if allowed and sizes is not None:
            allowed = sizes.take(len(message), now)
        if allowed:
            return True
        self.rate_limited += 1
        self.runtime.counters.rate_limited += 1
        if self._rate_policy == "close":
            if self.rate_limited == 1:
                log.info("syncws: peer %s over its rate limit: closing with 1008", self.peer.id)
            self.close(CLOSE_POLICY_VIOLATION, "rate limit exceeded")
        return False

    def _on_eof(self) -> None:
        """The stream ended (EOF or reset) without a close frame.

        Details stay 1006 unless a close was already sent.  A client that only
        half-closed can still read: give what its hooks queued a short,
        bounded chance to go out.
        """
        if self.connection.open and self.outbox.buffered:
            self.outbox.put_final()  # no close frame: what is queued, then the writer ends
            self.outbox.wait_flushed(min(self.close_timeout, 1.0))

    @hub_only
    def _pong(self, frame: bytes) -> None:
        """Answer a ping, keeping what is owed to a client that pings faster than it reads bounded.

        Up to :data:`_MAX_QUEUED_PONGS` pongs queue in order behind other
        frames.  Past that (the client is not reading what we send), RFC 6455
        §5.5.3 lets us answer only the most recent ping: its pong takes the
        outbox's single urgent slot, replacing an older one not yet written.
        """
        outbox = self.outbox
        if not outbox.buffered:
            self._queued_pongs = 0
        if self._queued_pongs < _MAX_QUEUED_PONGS:
            self._queued_pongs += 1
            outbox.put(frame)
        else:
            outbox.put_urgent(frame)

    # -- hooks -------------------------------------------------------------
    def _call(self, name: str, *args: object) -> None:
        hook = getattr(self.hooks, name)
        if hook is None:
            return
        try:
            self._invoke(hook, *args)
        except (Exception, SystemExit) as exc:
            # SystemExit too: a sys.exit() in one hook must not end the
            # server's thread for every other peer.
            self._hook_raised(name, exc)

    def _hook_raised(self, name: str, error: BaseException) -> None:
        """A hook raised (inside the ``except`` that caught ``error``): log it, report it, close with 1011."""
        log.exception("syncws: %s hook raised for peer %s", name, self.peer.id)
        self._report(error)
        self.close(CLOSE_INTERNAL_ERROR, "internal error")

    def _invoke(self, hook: Callable[..., object], *args: object) -> object:
        if self.hooks_in_threads:
            return self.runtime.run_in_thread(hook, *args, context=self.context)
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
    @hub_only
    def keepalive(self, now: float) -> None:
        """One keepalive tick (hub thread; the rules are :meth:`Connection.keepalive`'s)."""
        action = self.connection.keepalive(now)
        if action is _KEEPALIVE_PING:
            self.outbox.put(PING)
        elif action is _KEEPALIVE_EXPIRE:
            self._expire()

    @hub_only
    def _expire(self) -> None:
        log.info(
            "syncws: peer %s did not answer a ping within %g s; closing it with 1011",
            self.peer.id,
            self.connection.ping_timeout,
        )
        self.close(CLOSE_INTERNAL_ERROR, "keepalive ping timeout")
        # It did not answer a ping, so waiting close_timeout for its close frame
        # is pointless: hang up as soon as our close frame is out (or after 1 s).
        if self._abort_timer is not None:
            self._abort_timer.kill(block=False)
        self._abort_timer = gevent.spawn(self._abort_when_flushed, min(_EXPIRED_FLUSH, self.close_timeout))

    def _abort_when_flushed(self, timeout: float) -> None:
        self.outbox.wait_flushed(timeout)
        self.abort()

    # -- closing -----------------------------------------------------------
    @hub_only
    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start the close handshake (hub thread only); a no-op once it has begun."""
        self._send_close(self.connection.close(code, reason))

    @hub_only
    def _send_close(self, frame: bytes | None) -> None:
        if frame is None:
            return  # a close was already under way
        self.outbox.put_final(frame)
        # The client has close_timeout seconds to answer before we hang up.
        self._abort_timer = gevent.spawn_later(self.close_timeout, self.abort)

    def _on_overflow(self) -> None:
        self.runtime.counters.overflow_closes += 1
        log.warning("syncws: outbound buffer of peer %s overflowed; closing it", self.peer.id)
        self.close(CLOSE_POLICY_VIOLATION, "outbound buffer overflow")

    @hub_only
    def abort(self) -> None:
        """Hang up without a close frame; the read loop sees EOF and cleans up."""
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _close_socket(self) -> None:
        self.abort()
        try:
            self.socket.close()
        except OSError:
            pass

    def __repr__(self) -> str:
        return f"<Session {self.peer.id} {self.connection.state.value}>"


class _EndedSession:
    """What an ended session leaves its peer (a :class:`~syncws.server.peer.SessionLink`): a closed one."""

    __slots__ = ("_request", "connection", "extensions", "outbox", "protocol", "runtime", "socket")

    closed = True
    ready_state = _READY_STATES[State.CLOSED]

    def __init__(self, session: Session) -> None:
        self.runtime = session.runtime
        self.outbox = session.outbox  # stopped: takes nothing, buffers nothing
        self.protocol = session.protocol
        self._request = session.peer.request
        self.extensions = session.extensions
        self.socket = session.socket
        self.connection = session.connection  # closed: it sends nothing

    @property
    def url(self) -> str:
        return _ws_url(self._request)

    @property
    def deflate(self) -> Agreement | None:
        return self.connection.agreement

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Already closed: nothing to do."""

    def abort(self) -> None:
        """Already closed: nothing to do."""


def _ws_url(request: Request) -> str:
    url: str = request.url
    scheme, _, rest = url.partition("://")
    return ("wss://" if scheme == "https" else "ws://") + rest
