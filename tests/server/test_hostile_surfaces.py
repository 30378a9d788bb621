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


# -- 2. event streams ----------------------------------------------------------------------


def test_bytes_sent_on_an_open_event_stream_neither_stall_the_hub_nor_keep_it(echo_process):
    # The stream's socket watcher read in a loop that never yielded: 4
    # uploading streams gave the healthy peer 0.5-0.9 s.
    url = echo_process()
    server = _Server(url)
    chunk = b"x" * 65536

    def attack() -> int:
        sent = 0
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            try:
                while sent < 64 * 1024 * 1024:
                    sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                return sent  # the server ended the stream
        return -1

    with HealthyPeer(ws_of(url)) as healthy:
        uploads = hammer(attack, threads=4)
    healthy.check()
    # Every stream was ended by the server, after about the 64 KiB it allows
    # (plus what the kernel's buffers took before the close reached us).
    assert uploads and -1 not in uploads
    assert max(uploads) < 16 * 1024 * 1024, max(uploads)
