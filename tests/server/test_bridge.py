"""Calls handed to a running server's hub from OS threads."""

from __future__ import annotations

import threading

from syncws import App
from syncws.server.bridge import _BACKLOG

from ..conftest import wait_until


def test_threads_that_queue_faster_than_the_hub_runs_wait_and_lose_nothing(start_server):
    # 8 threads publishing without pause queued 40,000 calls: a hook's reply,
    # queued behind them, waited seconds.  Past _BACKLOG a caller waits.
    server = start_server(App())
    bridge = server.runtime.bridge
    ran: list[int] = []
    longest = [0]

    def record(n: int) -> None:
        ran.append(n)
        longest[0] = max(longest[0], len(bridge._calls))

    def flood(base: int) -> None:
        for n in range(base, base + 5000):
            assert bridge.call(record, n)

    threads = [threading.Thread(target=flood, args=(base,)) for base in range(0, 40_000, 5000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert wait_until(lambda: len(ran) == 40_000, 10)
    assert sorted(ran) == list(range(40_000))
    assert longest[0] <= _BACKLOG + len(threads)  # each thread may add one after its wait
