"""The thread pool of the ``threads`` option: views and hooks in OS threads.

A greenlet in the hub hands a call to the pool and waits; a worker (a real OS
thread, blocked on a real queue) runs it and hands the outcome back through the
server's :class:`~syncws.server.bridge.HubBridge`, whose one ``async`` watcher
wakes the hub once for every outcome that arrived meanwhile.  gevent's own
``ThreadPool`` makes an ``AsyncResult`` and a loop watcher per call: with it, a
hook in a thread cost 3.9 times the server CPU of a WebSocket echo in a
greenlet (``scripts/bench_threads``); see docs/performance.md for this one.

Workers start on demand, up to ``size``, and stay.  When every worker is busy a
call waits in a backlog; the counts say how often (``server.stats()``).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any

from gevent._hub_local import get_hub_if_exists
from gevent.hub import Waiter
from gevent.monkey import get_original

from ..base.threads import Outcome, RealLock, T, Ts, capture, start_thread
from .bridge import HubBridge

log = logging.getLogger("syncws")

_SimpleQueue = get_original("queue", "SimpleQueue")


_warned = False  # the gevent-in-a-pool-thread warning is logged once per process


def _run(task: tuple[Any, ...], bridge: HubBridge) -> None:
    # A function of its own, so that its locals (the call's arguments, its result)
    # are gone when it returns, not kept by an idle worker until its next call.
    context, fn, args, waiter = task
    bridge.hand_back(waiter.switch, capture(context.run, fn, *args))  # the hub waits for it: no backpressure


class WorkerPool:
    """Up to ``size`` OS threads that run calls for greenlets of one hub."""

    def __init__(self, size: int, bridge: HubBridge) -> None:
        self.size = size
        self._bridge = bridge
        self._queue = _SimpleQueue()
        self._lock = RealLock()
        self.threads = 0  # started and not stopped
        self.idle = 0  # waiting for a call, and promised to nobody
        self.backlog = 0  # calls waiting for a busy worker to finish
        self.waited = 0  # calls that found every worker busy
        self.calls = 0  # calls handed over since the start

    def apply(self, context: contextvars.Context, fn: Callable[[*Ts], T], args: tuple[*Ts]) -> T:
        """Run ``fn(*args)`` in ``context`` in a worker; return its result or raise its exception.

        From a greenlet of the hub, which waits; the hub serves other
        connections meanwhile.
        """
        start = False
        with self._lock:
            self.calls += 1
            if self.idle:
                self.idle -= 1  # that worker takes this call
            elif self.threads < self.size:
                self.threads += 1
                start = True
            else:
                self.backlog += 1
                self.waited += 1
        waiter = Waiter()
        self._queue.put((context, fn, args, waiter))
        if start:
            start_thread(self._work, off_hub=True)
        outcome: Outcome[T] = waiter.get()
        return outcome.unwrap()

    def _work(self) -> None:
        queue, bridge = self._queue, self._bridge
        while True:
            task = queue.get()
            if task is None:
                return
            _run(task, bridge)
            del task  # nothing of a call (a peer in its arguments) stays alive while the worker waits
            if get_hub_if_exists() is not None:
                self._gevent_used()
            with self._lock:
                if self.backlog:
                    self.backlog -= 1  # a call waits in the queue: take it
                else:
                    self.idle += 1

    def _gevent_used(self) -> None:
        # A view or hook started a greenlet here (gevent.spawn): it would never run, silently.
        global _warned
        if not _warned:
            _warned = True
            log.warning(
                "syncws: a view or hook in the thread pool used gevent (gevent.spawn, a gevent Event...): "
                "greenlets started in a pool thread never run. Start an OS thread (threading.Thread) "
                "instead, run it in the server's hub (server.call_in_hub(gevent.spawn, fn)), or set "
                "threads='off' (docs/how-to/embedding.md)"
            )

    def close(self) -> None:
        """Workers end once the calls already queued have run."""
        with self._lock:
            threads, self.threads, self.idle = self.threads, 0, 0
        for _ in range(threads):
            self._queue.put(None)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "size": self.size,
                "busy": self.threads - self.idle,
                "queued": self.backlog,
                "waited": self.waited,
                "tasks": self.calls,
            }
