"""Hand work to the server's gevent hub from any greenlet or OS thread.

gevent objects (events, sockets, greenlets) belong to the hub of the thread
that created them and must not be touched from another OS thread.  Callers in
the hub's own thread run the function at once; others queue it and wake the
hub through a loop ``async`` watcher, which is the one thread-safe entry point
libev/libuv offer.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from gevent.monkey import get_original

from ..base.threads import Ts

log = logging.getLogger("syncws")

_DRAIN_BATCH = 256  # calls run per wake-up of the hub
#: Calls queued from other threads past which a caller waits for the hub to catch up.
_BACKLOG = 1024
_MAX_WAIT = 1.0  # seconds a caller waits at most: then it queues anyway (nothing is dropped)
_sleep: Callable[[float], None] = get_original("time", "sleep")  # a real sleep, for OS threads
_monotonic: Callable[[], float] = get_original("time", "monotonic")
#: The calling OS thread's id, even when ``_thread`` is patched: ``== bridge.thread_id`` means "in the hub".
os_thread_id: Callable[[], int] = get_original("_thread", "get_ident")


class HubBridge:
    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.thread_id: int = hub.thread_ident  # one hub per thread: "in its thread" is "in the hub"
        self._calls: deque[Any] = deque()
        self._watcher = hub.loop.async_()
        self._watcher.start(self._drain)
        self._closed = False

    def in_hub_thread(self) -> bool:
        # The thread's id, not ``get_hub_if_exists() is self.hub``: half the
        # cost (0.09 against 0.19 µs), and this runs for every message sent.
        return os_thread_id() == self.thread_id

    def call(self, fn: Callable[[*Ts], object], *args: *Ts) -> bool:
        """Run ``fn(*args)`` in the hub's thread: now if we are there, soon otherwise.

        False when the bridge is closed and ``fn`` will not run.
        """
        if os_thread_id() == self.thread_id:  # in_hub_thread(), inline: it runs per message sent
            fn(*args)
            return True
        if self._closed:
            return False
        if len(self._calls) >= _BACKLOG:
            self._wait_for_room()
        return self.hand_back(fn, *args)

    def hand_back(self, fn: Callable[[*Ts], object], *args: *Ts) -> bool:
        """Queue ``fn(*args)`` for the hub from another thread, never waiting for room.

        For calls whose number is bounded elsewhere (the thread pool's results:
        one per busy worker), which the hub is waiting for: they must not wait
        behind the backpressure meant for threads that publish without pause.
        """
        if self._closed:
            return False
        self._calls.append((fn, args))  # deque.append is atomic across threads
        self._watcher.send()
        return True

    def _wait_for_room(self) -> None:
        """Backpressure on a thread that queues faster than the hub runs: wait until half drained.

        The queue is first in, first out, and the hub's own work (a hook's
        reply from the thread pool, say) queues behind it: 8 threads
        publishing without pause queued 40,000 calls and held a healthy
        peer's echo for seconds.  The wait is bounded, so a stuck hub delays
        a caller by ``_MAX_WAIT`` at most and nothing is lost.
        """
        calls = self._calls
        deadline = _monotonic() + _MAX_WAIT
        while len(calls) > _BACKLOG // 2 and not self._closed and _monotonic() < deadline:
            self._watcher.send()
            _sleep(0.001)

    def _drain(self) -> None:
        # At most _DRAIN_BATCH calls per wake-up: threads that queue calls
        # faster than the hub runs them must not keep it from its sockets.
        # The rest wait for the next loop iteration (the watcher is re-armed).
        calls = self._calls
        for _ in range(_DRAIN_BATCH):
            if not calls:
                return
            fn, args = calls.popleft()
            try:
                fn(*args)
            except Exception:  # one bad call must not stop the others
                log.exception("syncws: error in a call handed to the server hub")
        if calls and not self._closed:
            self._watcher.send()

    def close(self) -> None:
        self._closed = True
        while self._calls:
            self._drain()
        self._watcher.stop()
        self._watcher.close()
