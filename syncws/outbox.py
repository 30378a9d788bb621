"""Each peer's single writer and its bounded outbound buffer.

Every byte for a peer goes through its outbox, so frames from many greenlets
and threads never interleave, and a publisher only appends to a deque: a peer
that stops reading fills *its own* buffer and never blocks the publisher or
the other recipients.  When the buffer would exceed its limit the overflow
policy decides, for that peer alone:

* ``"close"`` (default): drop what is still queued and close the peer with
  1008, because a client that cannot keep up is better told than silently fed
  a stream with holes;
* ``"drop"``: discard the new message and count it in ``dropped``.

A single message larger than the whole limit is still accepted when nothing is
queued, otherwise it could never be sent at all.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Optional

import gevent
from gevent.event import Event

OVERFLOW_POLICIES = ("close", "drop")
_BATCH = 256 * 1024  # join small frames into one sendall up to this size


class Outbox:
    def __init__(
        self,
        sock,
        limit: Optional[int],
        policy: str = "close",
        on_overflow: Optional[Callable[[], None]] = None,
    ) -> None:
        if policy not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow policy must be one of {OVERFLOW_POLICIES}, not {policy!r}")
        self._sock = sock
        self.limit = limit
        self.policy = policy
        self._on_overflow = on_overflow
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._in_flight = 0
        self._wake = Event()
        self._flushed = Event()
        self._final = False  # a last frame (close) is queued: accept nothing more
        self.dropped = 0
        self.failed = False
        self._writer = gevent.spawn(self._run)

    @property
    def buffered(self) -> int:
        """Bytes accepted but not yet written to the socket."""
        return self._queued + self._in_flight

    def put(self, frame: bytes) -> bool:
        """Queue one frame; False when it was not accepted."""
        if self._final or self.failed:
            return False
        size = len(frame)
        if self.limit is not None and self.buffered and self.buffered + size > self.limit:
            if self.policy == "drop":
                self.dropped += 1
                return False
            self._queue.clear()
            self._queued = 0
            self.dropped += 1
            if self._on_overflow is not None:
                self._on_overflow()
            return False
        self._queue.append(frame)
        self._queued += size
        self._wake.set()
        return True

    def put_final(self, frame: bytes) -> None:
        """Queue the last frame (the close frame); the writer stops after it."""
        if self._final or self.failed:
            return
        self._final = True
        self._queue.append(frame)
        self._queued += len(frame)
        self._wake.set()

    def wait_flushed(self, timeout: Optional[float]) -> bool:
        return self._flushed.wait(timeout)

    def _run(self) -> None:
        queue = self._queue
        try:
            while True:
                if not queue:
                    if self._final:
                        break
                    self._wake.clear()
                    self._wake.wait()
                    continue
                chunks = [queue.popleft()]
                size = len(chunks[0])
                while queue and size < _BATCH:
                    chunk = queue.popleft()
                    chunks.append(chunk)
                    size += len(chunk)
                self._queued -= size
                self._in_flight = size
                self._sock.sendall(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                self._in_flight = 0
        except (OSError, ValueError):
            # The peer is gone (reset, closed socket); the reader notices too.
            self.failed = True
            queue.clear()
            self._queued = self._in_flight = 0
        finally:
            self._flushed.set()

    def stop(self) -> None:
        self.failed = True
        self._queue.clear()
        self._queued = self._in_flight = 0
        if not self._writer.dead:
            self._writer.kill(block=False)
        self._flushed.set()
