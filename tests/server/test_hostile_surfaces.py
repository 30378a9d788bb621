"""Hostile clients, round two: the surfaces added after the frame layer was hardened.

Compression negotiation, event streams, proxies, recovery, presence,
history, the metrics listener, TLS and memory, each attacked beside the
healthy peer of :mod:`tests.support.healthy` (the p99 bound and why it is
what it is are explained there).  docs/security.md quotes what these measure.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from ..support import HealthyPeer, http_exchange, parse_response, upgrade_request, ws_of

pytestmark = pytest.mark.slow


def hammer(attack, threads: int = 2, seconds: float = 3.0) -> list[object]:
    """Run ``attack()`` in a loop from ``threads`` threads for ``seconds``; return what each call returned."""
    results: list[object] = []
    deadline = time.monotonic() + seconds

    def run() -> None:
        while time.monotonic() < deadline:
            results.append(attack())

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + 30)
    return results


class _Server:
    def __init__(self, url: str) -> None:
        self.port = int(url.rsplit(":", 1)[1])


# -- 1. compression negotiation ------------------------------------------------------------


def test_a_padded_extensions_header_is_refused_without_stalling_the_hub(echo_process):
    # Two adjacent \s* in the parameter pattern made this quadratic: 16,000
    # spaces cost 0.8-1.8 s of hub time per upgrade.
    url = echo_process("--compression", "deflate")
    server = _Server(url)

    def attack() -> int:
        spaces = 4000 if time.monotonic() % 2 < 1 else 16_000  # under and over the length bound
        extra = f"Sec-WebSocket-Extensions: permessage-deflate; a{' ' * spaces}@\r\n"
        status, _, _ = parse_response(http_exchange(server, upgrade_request(extra=extra)))
        return status

    with HealthyPeer(ws_of(url)) as healthy:
        statuses = hammer(attack)
    healthy.check()
    assert statuses and set(statuses) == {400}, set(statuses)
