"""Each peer's outbound buffer, its writer, and the hub-wide flusher.

Every byte for a peer goes through its outbox, so frames from many greenlets
and threads never interleave, and a publisher only appends to a deque: a peer
that stops reading fills *its own* buffer and never blocks the publisher or
the other recipients.

Writing happens in two tiers:

* the :class:`Flusher` runs once at the end of the hub's current loop
  iteration and writes every outbox that received frames in it, with one
  non-blocking ``send`` each.  Frames queued in the same iteration (a burst of
  publishes) leave in one syscall, and a wide fan-out costs no greenlet switch
  per recipient;
* only when the socket will not take everything (a slow reader, a full TCP
  buffer), or when the last (close) frame is queued, does the peer get a
  writer greenlet of its own, to finish with blocking writes (:func:`send_all`).  That
  greenlet is the only thing that ever waits on the socket.  It is started on
  first need, not with the outbox: an idle peer costs no greenlet and no
  events (measured: about 3 KiB less per open connection).

When the buffer would exceed its limit the overflow policy decides, for that
peer alone:

* ``"close"`` (default): drop what is still queued and close the peer with
  1008, because a client that cannot keep up is better told than silently fed
  a stream with holes;
* ``"drop"``: discard the new message and count it in ``dropped``.

A single message larger than the whole limit is still accepted when nothing is
queued, otherwise it could never be sent at all.
"""

from __future__ import annotations

import _socket
import enum
import errno
import functools
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import gevent
import gevent.socket
from gevent.event import Event

from ..base.errors import ConfigurationError
from ..base.options import OVERFLOW_POLICIES
from ..base.threads import hub_only

log = logging.getLogger("syncws")

_BATCH = 256 * 1024  # join small frames into one send up to this size
_FLUSH_BATCH = 1024  # outboxes written per hub callback


def raw_socket(sock: object) -> _socket.socket | None:
    """The OS socket inside a plain gevent socket; None for any other kind (TLS above all).

    gevent keeps that socket non-blocking and wraps each call in Python
    (a try, then a wait when it would block).  Where syncws never wants the
    wait (a write now or not at all, a read after waiting for readability
    itself), it calls the socket's own method and saves a Python call per
    message.  Only the exact gevent class qualifies: on a TLS socket these
    methods would bypass the encryption.
    """
    if type(sock) is not gevent.socket.socket:
        return None
    plain: Any = sock  # (gevent has no types)
    raw: _socket.socket = plain._sock
    return raw


def send_now(sock: object) -> Callable[[bytes | memoryview], int]:
    """A ``send`` for ``sock`` that never waits: what it wrote, 0 when the socket takes nothing now.

    The flusher writes from a callback of the hub, where waiting is
    impossible (gevent raises ``BlockingSwitchOutError``).  A plain gevent
    socket's own ``send`` never waits (:func:`raw_socket`).  gevent's TLS
    socket waits whenever OpenSSL wants the socket, whatever timeout it is
    given: its connection object is written directly, and "wants" is 0.  The
    caller hands what was not written to the writer greenlet, whose
    ``send_all`` repeats the same bytes first, as OpenSSL asks of a retry.
    """
    raw = raw_socket(sock)
    if raw is not None:
        return raw.send
    given: Any = sock  # (gevent has no types)
    if not hasattr(given, "_sslobj"):
        return functools.partial(given.send, timeout=0.0)  # gevent's own: a timeout of 0 never waits

    def send_tls_now(data: bytes | memoryview) -> int:
        connection = given._sslobj
        if connection is None:
            raise OSError(errno.EBADF, "the TLS connection is closed")
        try:
            written: int = connection.write(data)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return 0
        return written

    return send_tls_now


def send_all(sock: socket.socket, data: bytes | bytearray | memoryview) -> int:
    """Write all of ``data`` to a gevent socket; its length.

    As the socket's ``sendall``, without the ``getsockopt(SO_SNDBUF)`` gevent's
    makes before every write.  That syscall (a chunk size, for PyPy's sake)
    cost about as much as the ``send`` itself: 37% of an event stream's CPU
    when its producer yields after each push (``python3 scripts/profile cpu
    sse_yield``), 3% of a handshake's (``... cpu handshake``: the 101 head, and
    the close frame the outbox's writer sends).  gevent's
    ``send`` tries at once and waits for writability only when the socket is
    full; the loop sends the rest of a partial write.
    """
    view = memoryview(data)
    total = len(view)
    sent = sock.send(view)
    while sent < total:
        sent += sock.send(view[sent:])
    return total


class Flushable(Protocol):
    """What the :class:`Flusher` writes: an :class:`Outbox`, or an event stream's pushes."""

    _dirty: bool  # marked, not flushed yet

    def _flush_nonblocking(self) -> None: ...


class Flusher:
    """Writes dirty outboxes once per hub loop iteration (hub thread only).

    ``settle``: wait for one more round of the hub's callbacks before
    writing, so that a producer which pushes and then yields (``sleep(0)``)
    pushes again first and two pushes leave in one ``send``.  The event
    streams' flusher settles (a dashboard pushes as things happen, and each
    write is a syscall); the WebSocket peers' does not (an echo answers at
    once).
    """

    def __init__(self, hub: Any, *, settle: bool = False) -> None:
        self._loop = hub.loop
        self._dirty: list[Flushable] = []
        self._scheduled = False
        self._first = self._settle if settle else self._flush

    @hub_only
    def mark(self, outbox: Flushable) -> None:
        if outbox._dirty:
            return
        outbox._dirty = True
        self._dirty.append(outbox)
        if not self._scheduled:
            self._scheduled = True
            self._loop.run_callback(self._first)

    def _settle(self) -> None:
        self._loop.run_callback(self._flush)  # behind the callbacks queued meanwhile (gevent runs them all)

    @hub_only
    def _flush(self) -> None:
        dirty = self._dirty
        if len(dirty) > _FLUSH_BATCH:
            # Fairness: a very wide fan-out is written in slices, each its own
            # hub callback, so gevent can poll for I/O between them (it checks
            # its switch interval between callbacks, never inside one).
            dirty, self._dirty = dirty[:_FLUSH_BATCH], dirty[_FLUSH_BATCH:]
            self._loop.run_callback(self._flush)
        else:
            self._scheduled = False
            self._dirty = []
        for outbox in dirty:
            outbox._dirty = False
            try:
                outbox._flush_nonblocking()
            except Exception:  # never let one peer break the hub callback
                log.exception("syncws: error while flushing a peer's buffer")


def _take(outbox: Outbox, limit: int = _BATCH) -> bytes | memoryview:
    outbox._urgent = None  # from here on it is being written: no longer replaceable
    outbox._partial = False
    queue = outbox._queue
    chunks = [queue.popleft()]
    size = len(chunks[0])
    while queue and size < limit:
        chunk = queue.popleft()
        chunks.append(chunk)
        size += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class OutboxState(enum.Enum):
    """Whether an outbox still takes frames (docs/architecture.md has the diagram).

    OPEN --put_final--> FINAL; OPEN or FINAL --a failed write, stop()--> FAILED.
    Independently, once the writer has nothing left to do in FINAL or FAILED,
    the outbox is *done* (:meth:`Outbox.wait_flushed` returns).
    """

    OPEN = "open"  # frames are accepted
    FINAL = "final"  # the last frame (close) is queued: nothing more is accepted
    FAILED = "failed"  # the peer is gone: nothing is written any more


#: Every change of :attr:`Outbox.state`: (from, what causes it, to); see the protocol's TRANSITIONS.
TRANSITIONS: tuple[tuple[OutboxState, str, OutboxState], ...] = (
    (OutboxState.OPEN, "put_final(): the close frame", OutboxState.FINAL),
    (OutboxState.OPEN, "a failed write, stop()", OutboxState.FAILED),
    (OutboxState.FINAL, "a failed write, stop()", OutboxState.FAILED),
)

_OPEN, _FINAL, _FAILED = OutboxState.OPEN, OutboxState.FINAL, OutboxState.FAILED  # globals: see protocol/connection.py
_NO_QUEUE: deque[bytes | memoryview] = deque()  # shared by outboxes without a frame yet; always empty


class Outbox:
    def __init__(
        self,
        sock: Any,
        limit: int | None,
        policy: str = "close",
        on_overflow: Callable[[], None] | None = None,
        flusher: Flusher | None = None,
        on_drain: Callable[[], None] | None = None,
    ) -> None:
        if policy not in OVERFLOW_POLICIES:
            raise ConfigurationError(f"overflow policy must be one of {OVERFLOW_POLICIES}, not {policy!r}")
        self._sock = sock
        self._send_now = send_now(sock)  # the flusher's: a write now or not at all
        self.limit = limit
        self.policy = policy
        self._on_overflow = on_overflow
        self._flusher = flusher
        self._queue: deque[bytes | memoryview] = _NO_QUEUE  # a deque of its own on first put (_open_queue)
        self._queued = 0
        self._in_flight = 0
        self._dirty = False
        self._writer: gevent.Greenlet[..., Any] | None = None  # started on first need
        self._wake: Event | None = None  # wakes the writer; exists with it
        self._flushed: Event | None = None  # made by the first wait_flushed()
        self.state = _OPEN
        self._done = False  # the writer has finished, in FINAL or FAILED (or the outbox was stopped)
        self._urgent: bytes | None = None  # one control frame that jumps the queue
        self._partial = False  # the queue starts with the rest of a partly written chunk
        self._on_drain = on_drain
        self._pushed_back = False  # a write was short since the buffer was last empty
        self._drain_waiters: list[tuple[int, Callable[[], None]]] | None = None
        self.dropped = 0

    def _open_queue(self) -> deque[bytes | memoryview]:
        """The queue to add to, made now if this is the first frame.

        An empty deque allocates a 64-slot block at once (about 0.7 KiB), and
        most peers of a large server are idle most of the time: until their
        first frame they share one empty deque that nothing is ever added to.
        """
        queue = self._queue
        if queue is _NO_QUEUE:
            queue = self._queue = deque()
        return queue

    @property
    def failed(self) -> bool:
        """The peer is gone: a write failed, or the outbox was stopped."""
        return self.state is _FAILED

    @property
    def buffered(self) -> int:
        """Bytes accepted but not yet written to the socket."""
        return self._queued + self._in_flight

    @hub_only
    def put(self, frame: bytes) -> bool:
        """Queue one frame; False when it was not accepted."""
        if self.state is not _OPEN:
            return False
        size = len(frame)
        limit = self.limit
        buffered = self._queued + self._in_flight  # (not the property: this runs per message)
        if limit is not None and buffered and buffered + size > limit:
            if self.policy == "drop":
                self.dropped += 1
                return False
            self._queue.clear()
            self._queued = 0
            self._urgent = None
            self.dropped += 1
            if self._on_overflow is not None:
                self._on_overflow()
            return False
        # _open_queue() and _schedule(), inline: this runs per message sent.
        queue = self._queue
        if queue is _NO_QUEUE:
            queue = self._queue = deque()
        queue.append(frame)
        self._queued += size
        if self._flusher is not None and not self._in_flight:
            self._flusher.mark(self)
        else:
            self._wake_writer()
        return True

    @hub_only
    def put_urgent(self, frame: bytes) -> None:
        """Queue a control frame ahead of everything else, replacing one not yet taken.

        For the pong owed to a client that pings faster than it reads: only
        the answer to its most recent ping is kept (RFC 6455 §5.5.3), so what
        such a client costs us stays one frame.
        """
        if self.state is not _OPEN:
            return
        # Front of the queue, but behind the rest of a frame already partly
        # written: frames must never interleave.
        at = 1 if self._partial else 0
        if self._urgent is not None:
            self._queued -= len(self._urgent)
            del self._queue[at]
        self._urgent = frame
        self._open_queue().insert(at, frame)
        self._queued += len(frame)
        self._schedule()

    def _schedule(self) -> None:
        """Have new frames written: by the flusher, or by the writer while it is busy."""
        if self._flusher is not None and not self._in_flight:
            self._flusher.mark(self)
        else:
            self._wake_writer()

    def _wake_writer(self) -> None:
        """Have the writer greenlet write what is queued; start it if it does not run yet."""
        if self._writer is None:
            if self._done:
                return  # stopped: nothing will be written any more
            self._wake = Event()
            self._writer = gevent.spawn(self._run)
        else:
            assert self._wake is not None
            self._wake.set()

    @hub_only
    def put_final(self, frame: bytes | None = None) -> None:
        """Queue the last frame (the close frame), or none: nothing is accepted after it.

        What is queued is written now as far as the socket takes it; the
        writer greenlet writes any rest, and stops after it.  Most often the
        socket takes it all and no writer is started just for the close
        frame: a greenlet costs a connection's close an ``mmap`` and a
        ``munmap`` (its Python stack, ``strace -f -c``) besides the switches.
        """
        if self.state is not _OPEN:
            return
        self.state = _FINAL
        if frame is not None:
            self._open_queue().append(frame)
            self._queued += len(frame)
        if self._writer is not None:
            self._wake_writer()  # it is writing: it goes on, and stops after the last frame
            return
        self._flush_nonblocking()  # hands a rest to a new writer
        if self._writer is None and not self._done:
            self._finished()  # all written (a failed write has finished already)

    def wait_flushed(self, timeout: float | None) -> bool:
        """Wait until the last frame is written (or the peer is gone); False on timeout."""
        if self._done:
            return True
        if self._flushed is None:
            self._flushed = Event()
        return bool(self._flushed.wait(timeout))

    @hub_only
    def _flush_nonblocking(self) -> None:
        """Write what the socket takes now; hand any rest to the writer."""
        queue = self._queue
        while queue and not self._in_flight and self.state is not _FAILED:
            data = _take(self)
            try:
                sent = self._send_now(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._fail()
                return
            self._queued -= sent
            if sent < len(data):
                queue.appendleft(memoryview(data)[sent:])  # the rest, without copying it
                self._partial = True
                self._pushed_back = True
                self._wake_writer()
                return
            if self._drain_waiters or self._pushed_back:
                self._progress()

    def _run(self) -> None:
        queue = self._queue
        wake = self._wake
        assert wake is not None
        try:
            while True:
                if not queue:
                    if self.state is not _OPEN:
                        break
                    wake.clear()
                    wake.wait()
                    continue
                data = _take(self)
                self._queued -= len(data)
                self._in_flight = len(data)
                send_all(self._sock, data)
                self._in_flight = 0
                if self._drain_waiters or self._pushed_back:
                    self._progress()
        except (OSError, ValueError):
            # The peer is gone (reset, closed socket); the reader notices too.
            self._fail()
        finally:
            self._finished()

    def _finished(self) -> None:
        self._done = True
        if self._flushed is not None:
            self._flushed.set()
        self._release_waiters()

    # -- drain -------------------------------------------------------------
    @hub_only
    def add_drain_waiter(self, threshold: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` once ``buffered <= threshold`` (at once if it is) or the outbox ends (hub thread)."""
        if self.buffered <= threshold or self._done or self.failed:
            callback()
            return
        if self._drain_waiters is None:
            self._drain_waiters = []
        self._drain_waiters.append((threshold, callback))

    @hub_only
    def remove_drain_waiter(self, callback: Callable[[], None]) -> None:
        waiters = self._drain_waiters
        if waiters:
            waiters[:] = [w for w in waiters if w[1] is not callback]

    def _progress(self) -> None:
        """Bytes left the buffer: wake the waiters whose threshold is met; end a push-back."""
        buffered = self._queued + self._in_flight
        waiters = self._drain_waiters
        if waiters:
            ready = [w for w in waiters if buffered <= w[0]]
            if ready:
                waiters[:] = [w for w in waiters if buffered > w[0]]
                for _threshold, callback in ready:
                    callback()
        if buffered == 0 and self._pushed_back:
            self._pushed_back = False
            if self._on_drain is not None and self.state is _OPEN:
                self._on_drain()

    def _release_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, None
        for _threshold, callback in waiters or ():
            callback()

    def _fail(self) -> None:
        self.state = _FAILED
        self._urgent = None
        self._queue.clear()
        self._queued = self._in_flight = 0
        self._release_waiters()  # a closed peer counts as drained
        if self._wake is not None:
            self._wake.set()  # the writer ends, and says it is done
        else:
            self._finished()  # nothing will ever be written: flushed, vacuously

    @hub_only
    def stop(self) -> None:
        self._fail()
        writer = self._writer
        if writer is not None and not writer.dead:
            writer.kill(block=False)
        self._finished()
        # The callbacks are the session's bound methods: a cycle that would keep
        # the session (and what hangs off it) until the cycle collector ran.
        self._on_overflow = self._on_drain = None
