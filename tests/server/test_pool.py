"""The hook thread pool (syncws/server/pool.py), driven from a real gevent hub and its bridge."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import gevent
import pytest

from syncws.server.bridge import HubBridge
from syncws.server.pool import WorkerPool


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    bridge = HubBridge(gevent.get_hub())  # this thread's hub: the greenlets below wait in it
    workers = WorkerPool(2, bridge)
    yield workers
    workers.close()
    bridge.close()


def test_a_call_runs_in_another_thread_and_returns_its_value(pool: WorkerPool) -> None:
    import contextvars

    here = threading.get_ident()
    assert pool.apply(contextvars.copy_context(), lambda a, b: (a + b, threading.get_ident()), (2, 3))[0] == 5
    assert pool.apply(contextvars.copy_context(), threading.get_ident, ()) != here


def test_an_exception_is_raised_where_the_caller_waits(pool: WorkerPool) -> None:
    import contextvars

    with pytest.raises(ValueError, match="invalid literal"):
        pool.apply(contextvars.copy_context(), int, ("x",))
    with pytest.raises(SystemExit):  # re-raised in the caller, not in the worker (which survives)
        pool.apply(contextvars.copy_context(), _exit, ())
    assert pool.apply(contextvars.copy_context(), len, ("ok",)) == 2


def test_the_callers_context_variables_go_along(pool: WorkerPool) -> None:
    import contextvars

    name: contextvars.ContextVar[str] = contextvars.ContextVar("name", default="unset")
    name.set("the view's")
    assert pool.apply(contextvars.copy_context(), name.get, ()) == "the view's"


def test_workers_start_on_demand_up_to_the_size_and_a_full_pool_queues(pool: WorkerPool) -> None:
    import contextvars

    release = threading.Event()
    started: list[int] = []

    def block() -> str:
        started.append(threading.get_ident())
        release.wait(5)
        return "done"

    waiting = [gevent.spawn(pool.apply, contextvars.copy_context(), block, ()) for _ in range(3)]
    with gevent.Timeout(5):  # the hub runs the greenlets; the workers block in their threads
        while len(started) < 2:
            gevent.sleep(0.01)
    gevent.sleep(0.05)
    assert len(set(started)) == 2  # two workers at once, no third
    stats = pool.stats()
    assert (stats["size"], stats["busy"], stats["queued"], stats["waited"]) == (2, 2, 1, 1)
    release.set()
    assert [g.get(timeout=5) for g in waiting] == ["done"] * 3
    assert pool.stats()["tasks"] == 3 and pool.threads == 2  # the third call reused a worker


def _exit() -> None:
    raise SystemExit(3)
