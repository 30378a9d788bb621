"""Server-Sent Events: ``create_event_stream`` and the ``EventStream`` it returns.

A stream is a WSGI response whose body first yields an empty chunk, so that
the server sends the head at once.  ``push`` may come from any greenlet or OS
thread: it formats the event and hands it to the server's hub, which queues
it.  From then on the hub writes the pushes itself, those of one turn as one
HTTP chunk, through an :class:`~syncws.server.outbox.Outbox` as a WebSocket
peer's frames are (:meth:`EventStream._write_directly`); the body's greenlet
only waits for the keep-alive and the end.  Behind a middleware that declares
a body of its own, the body yields the pushes instead
(:meth:`EventStream._yield_pushes`).  A second greenlet watches the socket so
that a client that goes away is noticed at once, even when nothing is being
pushed.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event
from werkzeug.exceptions import HTTPException, InternalServerError

from ..base.errors import ConfigurationError, SyncwsError
from ..base.options import is_seconds
from ..base.threads import RealLock, hub_only
from ..protocol.payload import Outgoing
from ..protocol.sse import HEADERS, EventStreamMessage, MessageLike, format_comment, format_event, format_retry
from ..pubsub.history import Recovery
from ..pubsub.registry import ABSENT
from .handler import OVER_CAPACITY, RETRY_AFTER, SHUTTING_DOWN
from .http import TRANSPORT_KEY
from .outbox import Flusher, Outbox
from .runtime import Runtime

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

log = logging.getLogger("syncws")

#: What an event stream's client may send after its request before the stream
#: is ended.  EventSource sends nothing; this leaves room for the rest of a
#: request body the view did not read.  Not an option: no client needs more.
_MAX_UPLOAD = 64 * 1024

__all__ = ["EventStream", "EventStreamMessage", "create_event_stream"]

#: ``stream.subscribe(topic)``'s default ``since``: the request's ``Last-Event-ID``.
LAST_EVENT_ID: Any = object()


class NoTransportError(InternalServerError, SyncwsError, RuntimeError):
    """``create_event_stream`` under a server that is not syncws (``flask run``, wsgiref...).

    An ``HTTPException``, so that the view's answer is a 500 that says what to
    do (syncws ``App`` and Flask render it; neither logs a traceback), and a
    ``RuntimeError`` for callers that catch that.  Logged once per process.
    """

    MESSAGE = "event streams need the syncws server; run the app with: python -m syncws module:app"

    def __init__(self, environ: dict[str, Any] | None = None) -> None:
        global _warned_no_transport
        super().__init__(self.MESSAGE)
        if not _warned_no_transport:
            _warned_no_transport = True
            server = (environ or {}).get("SERVER_SOFTWARE", "unknown")
            log.error("syncws: %s (server: %s)", self.MESSAGE, server)

    def __str__(self) -> str:
        return self.MESSAGE


_warned_no_transport = False


class ConnectionLimitError(HTTPException, SyncwsError):
    """A new event stream over ``max_connections`` (503) or ``max_connections_per_ip`` (429), or while the server stops.

    Raised by ``create_event_stream``; an ``HTTPException``, so the view's
    answer is that status with ``Retry-After`` (syncws ``App`` and Flask
    render it).
    """

    def __init__(self, status: int, description: str | None = None) -> None:
        self.code = status
        super().__init__(OVER_CAPACITY[status] if description is None else description)

    def get_headers(
        self, environ: WSGIEnvironment | None = None, scope: dict[str, Any] | None = None
    ) -> list[tuple[str, str]]:
        return [("Content-Type", "text/plain; charset=utf-8"), ("Retry-After", str(RETRY_AFTER))]

    def get_body(self, environ: WSGIEnvironment | None = None, scope: dict[str, Any] | None = None) -> str:
        return f"{self.description}\n"


class EventStream:
    """An open ``text/event-stream`` response (see the README's SSE section)."""

    def __init__(
        self,
        environ: dict[str, Any],
        *,
        keep_alive: float | None = 15.0,
        retry: int | None = None,
        namespace: str | None = None,
    ) -> None:
        transport = environ.get(TRANSPORT_KEY)
        if transport is None:
            raise NoTransportError(environ)
        if keep_alive is not None and not is_seconds(keep_alive):
            raise ConfigurationError("keep_alive must be a positive number of seconds or None")
        if retry is not None and (not isinstance(retry, int) or isinstance(retry, bool) or retry < 0):
            raise ConfigurationError("retry must be a non-negative integer (milliseconds)")
        self.environ = environ
        self._runtime: Runtime = transport.runtime
        self._transport = transport
        if self._runtime.stopping:  # a drain's delay is over, or a stop began: reconnect elsewhere
            self._runtime.refuse(503)
            raise ConnectionLimitError(503, SHUTTING_DOWN)
        refused = self._runtime.admit(transport.remote_address)
        if refused is not None:
            self._runtime.refuse(refused)
            raise ConnectionLimitError(refused)
        self._admitted = True  # holds a connection slot until the stream ends
        transport.at_end(self._abandon)
        self.keep_alive = keep_alive
        self.retry = retry
        self.namespace: str = namespace if namespace is not None else environ.get("PATH_INFO", "/") or "/"
        self.last_event_id: str | None = environ.get("HTTP_LAST_EVENT_ID")
        self._queue: deque[bytes] = deque()
        self._queued = 0  # bytes pushed and still in the queue
        self._in_flight = 0  # bytes handed to a write that has not returned yet
        # Once the head is out, the hub writes the pushes (_write_directly):
        self._outbox: Outbox | None = None
        self._flusher: Flusher | None = None  # ... when the pushes of a turn of the hub are handed to the outbox
        self._dirty = False  # marked for the flusher
        self._chunked = False  # ... as HTTP chunks
        self._idle = True  # nothing pushed since the last keep-alive
        self.limit = self._runtime.options.max_buffer_size
        self._started = False
        self._wake = Event()
        self._closed = False  # set by close(): later pushes are refused at once
        self._ending = False  # set in the hub: the body stops once the queue is flushed
        self._ended = False
        self._callbacks: list[Callable[[], Any]] = []
        self._callbacks_lock = RealLock()
        self._id: str | None = None
        self._started_at = time.monotonic()  # for the stream's log line (its duration)

    @property
    def id(self) -> str:
        """A unique string of this stream's (its presence entry's id)."""
        if self._id is None:
            self._id = "sse-" + uuid.uuid4().hex
        return self._id

    @property
    def server(self) -> Any:
        """The :class:`~syncws.Server` serving this stream."""
        return self._runtime.owner

    # -- pushing --------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def push(self, message: MessageLike | list[MessageLike]) -> None:
        """Queue one event, or several sent together (a list)."""
        if isinstance(message, list):
            text = "".join(format_event(item) for item in message)
        else:
            text = format_event(message)
        self._enqueue(text.encode("utf-8"))

    def push_comment(self, text: str) -> None:
        self._enqueue(format_comment(text).encode("utf-8"))

    def _enqueue(self, chunk: bytes) -> None:
        # Through the hub like every other delivery, so a push and a publish
        # made one after the other from any thread arrive in that order.
        if not self._closed:
            self._runtime.post_to_hub(self._push, chunk)

    @hub_only
    def _push(self, chunk: bytes) -> None:
        self._runtime.counters.sent(1, len(chunk))
        self._append(chunk)

    @hub_only
    def _append(self, chunk: bytes) -> None:
        if self._ending:
            return  # pushes after close are ignored, as documented
        buffered = self.buffered
        if self.limit is not None and buffered and buffered + len(chunk) > self.limit:
            self._overflow(buffered)
            return
        self._queue.append(chunk)
        self._queued += len(chunk)
        self._idle = False
        flusher = self._flusher
        if flusher is not None:  # written from the hub (_write_directly)
            if not self._dirty:
                flusher.mark(self)
        elif not self._wake.is_set():  # written by the body (_yield_pushes)
            self._wake.set()

    @property
    def buffered(self) -> int:
        """Bytes pushed that the socket has not taken yet (queued or in a blocked write)."""
        outbox = self._outbox
        return self._queued + (self._in_flight if outbox is None else outbox.buffered)

    @hub_only
    def _flush_nonblocking(self) -> None:
        """Hand what was pushed since the last turn of the hub to the outbox, as one write (the flusher's call)."""
        queue, outbox = self._queue, self._outbox
        if not queue or outbox is None:
            return
        if self._chunked:  # one HTTP chunk, as gevent writes one, built with a single copy of the events
            data = b"".join((b"%x\r\n" % self._queued, *queue, b"\r\n"))
        else:
            data = queue[0] if len(queue) == 1 else b"".join(queue)
        queue.clear()
        self._queued = 0
        self._transport.body_bytes += len(data)
        outbox.put(data)

    def _overflow(self, buffered: int) -> None:
        # The client stopped reading and the body is stuck in a write: like a
        # WebSocket peer, the stream is ended rather than buffered without
        # bound.  EventSource reconnects with Last-Event-ID.
        self._runtime.counters.overflow_closes += 1
        log.warning("syncws: event stream %s is not reading (%d bytes unsent); ending it", self.namespace, buffered)
        self._closed = self._ending = True
        self._queue.clear()
        self._queued = 0
        self._transport.abort()  # also ends a write blocked on the stalled client
        self._wake.set()

    @hub_only
    def deliver(self, outgoing: Outgoing) -> None:
        """Receive a pub/sub publish (hub thread): the payload becomes the data."""
        self._append(outgoing.memo("sse", _publish_event))

    # -- pub/sub --------------------------------------------------------------
    def subscribe(self, topic: str, *, since: Any = LAST_EVENT_ID, presence: object = ABSENT) -> Recovery:
        """Receive the publishes to ``topic``, each with ``id: <offset>`` when history is on.

        ``since`` defaults to the request's ``Last-Event-ID``: a reconnecting
        ``EventSource`` first gets every stored event it missed, then live
        ones (the result says whether nothing was missing).  One
        ``Last-Event-ID`` names a position in one topic's history: a stream
        that subscribes to several topics resumes the one the id belongs to
        and replays what is stored of the others, so give each resumable
        topic its own stream, or pass ``since`` yourself.  ``presence``: show
        this stream in the topic's presence with this info.
        """
        if self._closed:
            return Recovery()
        if since is LAST_EVENT_ID:
            since = self.last_event_id
        return self._runtime.subscribe(self, topic, since, presence)

    def unsubscribe(self, topic: str) -> None:
        self._runtime.registry.unsubscribe(self, topic)

    @property
    def topics(self) -> frozenset[str]:
        return self._runtime.registry.topics_of(self)

    # -- ending ---------------------------------------------------------------
    def on_closed(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` once when the stream ends (at once if it already has)."""
        with self._callbacks_lock:
            if not self._ended:
                self._callbacks.append(callback)
                return
        _run_callback(callback)

    def restart(self, retry: int | None = None) -> None:
        """End the stream so the browser reconnects with ``Last-Event-ID`` and resumes (see ``Runtime.gap_received``).

        ``retry``: milliseconds the browser waits before it reconnects, sent
        as a ``retry:`` field first (a drain spreads the reconnects this way).
        """
        if retry is not None:
            self._enqueue(format_retry(retry).encode("utf-8"))
        self.close()

    def close(self) -> None:
        """End the stream; idempotent, safe from any thread."""
        if self._closed:
            return
        self._closed = True
        # Through the hub, after the pushes this thread made before closing:
        # those are delivered, only later ones are dropped.
        self._runtime.post_to_hub(self._end)

    @hub_only
    def _end(self) -> None:
        self._ending = True
        self._wake.set()

    # -- WSGI -----------------------------------------------------------------
    def send(self) -> EventStream:
        """The WSGI response; returning the stream itself is the same."""
        return self

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", list(HEADERS))
        self._transport.reusable = False  # the socket is watched; never reuse it
        self._transport.hub_body = True  # the body waits on gevent objects: never iterated in a pool thread
        return self._body()

    def _body(self) -> Iterator[bytes]:
        # An empty chunk first makes the server send the head now; nothing else
        # happens before it, because a framework may take the first chunk where
        # the view ran (werkzeug's run_wsgi_app does, in a pool thread with the
        # threads option), and everything after it needs the hub.
        yield b""
        self._started = True
        runtime = self._runtime
        runtime.streams.add(self)
        runtime.counters.sse_opened += 1
        watcher = gevent.spawn(self._watch_socket)
        try:
            if self.retry is not None:
                retry = format_retry(self.retry).encode("ascii")
                self._queue.appendleft(retry)
                self._queued += len(retry)
            chunked = self._transport.chunked
            if chunked is None or runtime.flusher is None or runtime.stream_flusher is None:
                yield from self._yield_pushes()
            else:
                self._write_directly(chunked, runtime.flusher, runtime.stream_flusher)
        finally:
            self._closed = self._ending = True
            runtime.streams.discard(self)
            runtime.registry.remove(self)
            watcher.kill(block=False)
            self._finish()

    def _yield_pushes(self) -> Iterator[bytes]:
        """Serve the stream as the body's chunks: when a middleware stands between it and the socket.

        (:attr:`Transport.chunked` is None: the middleware declared a body of
        its own, gzip say, so the bytes must go through it.)
        """
        queue = self._queue
        while True:
            if queue:
                chunks = []
                while queue:
                    chunks.append(queue.popleft())
                chunk = b"".join(chunks)
                # Until the write returns, these bytes still count against the limit.
                self._queued = 0
                self._in_flight = len(chunk)
                yield chunk
                self._in_flight = 0
                continue
            if self._ending:
                break
            self._wake.clear()
            if queue or self._ending:
                continue
            if self._wake.wait(self.keep_alive):
                # Woken by a push: one turn of the hub first, so that the pushes made
                # in it go out in this write, not one write each (docs/performance.md).
                gevent.sleep(0)
            elif not queue and not self._ending:
                yield format_comment("keep-alive").encode("ascii")

    def _write_directly(self, chunked: bool, writes: Flusher, pushes: Flusher) -> None:
        """Serve the stream by writing to the socket from the hub, as the WebSocket peers' outboxes are.

        A push then costs no greenlet switch: it is queued, and the hub's
        stream flusher hands what the pushes of one turn queued to the
        outbox as one write, one non-blocking ``send``.  The outbox starts a
        writer greenlet only for a client slower than the pushes.  This
        greenlet is left with the keep-alive and the end.
        """
        outbox = self._outbox = Outbox(self._transport.socket, None, flusher=writes)  # the limit is ours
        self._chunked = chunked
        self._flusher = pushes
        if self._queue:  # what was pushed before the head went out
            pushes.mark(self)
        wake = self._wake
        try:
            while not self._ending:
                wake.clear()
                if not wake.wait(self.keep_alive) and not self._ending:
                    if self._idle:
                        self._append(format_comment("keep-alive").encode("ascii"))
                    self._idle = True
            self._flush_nonblocking()  # what was pushed before close() (after it, nothing is queued)
            if not self._transport.aborted:
                outbox.put_final()
                outbox.wait_flushed(None)
        finally:
            outbox.stop()  # killed by a stop, say: no writer left behind

    def _abandon(self) -> None:
        """The request ended without serving this stream (the view raised, say)."""
        if not self._started:
            self._closed = self._ending = True
            self._runtime.registry.remove(self)
            self._finish()

    def _watch_socket(self) -> None:
        """Return when the client goes away: EventSource never sends after its request.

        Whatever a client sends anyway is read and dropped, one read per turn
        of the hub (a read of data already there never yields, so a client
        uploading without pause would otherwise hold the hub), and past
        ``_MAX_UPLOAD`` bytes the stream is ended: that is not an EventSource.
        """
        sock = self._transport.socket
        received = 0
        try:
            while data := sock.recv(16384):
                received += len(data)
                if received > _MAX_UPLOAD:
                    log.info("syncws: an event stream's client sent %d bytes; ending the stream", received)
                    break
                gevent.sleep(0)
        except (OSError, ValueError):
            pass
        self.close()

    def _finish(self) -> None:
        runtime = self._runtime
        if runtime.logs_ends:
            path = self.environ.get("PATH_INFO", "/")
            runtime.log_end("sse", self.id, path, self._transport.remote_address, self._started_at)
        if self._admitted:
            self._admitted = False
            self._runtime.release(self._transport.remote_address)
        with self._callbacks_lock:
            self._ended = True
            callbacks, self._callbacks = self._callbacks, []
        runtime = self._runtime
        for callback in callbacks:
            if runtime.threaded:  # a callback that blocks holds a pool thread, not the hub
                runtime.run_in_thread(_run_callback, callback)
            else:
                _run_callback(callback)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<EventStream {self.namespace!r} {state}>"


def _publish_event(outgoing: Outgoing) -> bytes:
    # Formatted once per publish, whatever the number of streams.
    offset = outgoing.offset
    if offset is None:
        return format_event(outgoing.text).encode("utf-8")
    return format_event(EventStreamMessage(data=outgoing.text, id=offset)).encode("utf-8")


def _run_callback(callback: Callable[[], Any]) -> None:
    try:
        callback()
    except Exception:
        log.exception("syncws: an event stream on_closed callback raised")


def create_event_stream(request_or_environ: Any, **options: Any) -> EventStream:
    """Open an event stream for this request (a werkzeug/Flask request or an environ).

    Options: ``keep_alive`` (seconds, default 15, None disables), ``retry``
    (milliseconds, written once at the start), ``namespace`` (for pub/sub;
    default the request path).
    """
    environ = getattr(request_or_environ, "environ", request_or_environ)
    if not isinstance(environ, dict):
        raise TypeError("create_event_stream() takes a request or a WSGI environ")
    return EventStream(environ, **options)
