"""Shared fixtures: a real syncws server on port 0 in a background thread.

The test process itself is not monkey-patched, so the clients below are
ordinary blocking clients in real OS threads, as a user's would be.
"""

from __future__ import annotations

import os

# Hub-thread contracts are checked in the whole suite (syncws/base/threads.py's hub_only),
# in the test process and in every server it starts: set before syncws is imported.
os.environ.setdefault("SYNCWS_DEBUG", "1")

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import websocket

from syncws import App, Channels, serve
from syncws.client import Client
from syncws.server.server import Server

_create_connection = websocket.create_connection
_opened: list = []


def _tracked_create_connection(*args, **kwargs) -> websocket.WebSocket:
    client = _create_connection(*args, **kwargs)
    _opened.append(client)
    return client


# Every websocket-client connection a test opens is closed after it, even when
# the server closed it first (websocket-client then keeps its socket): the
# suite fails on unclosed sockets (ResourceWarning is an error in pytest.ini).
websocket.create_connection = _tracked_create_connection


@pytest.fixture(autouse=True)
def _hub_contracts() -> Iterator[None]:
    """Fail a test whose code called a hub-thread-only method from a pool or broker thread."""
    from syncws.base import threads

    threads.hub_violations.clear()
    yield
    found, threads.hub_violations[:] = list(threads.hub_violations), []
    assert not found, f"hub-thread-only methods called off the hub: {found}"


@pytest.fixture(autouse=True)
def _close_websocket_clients(start_server) -> Iterator[None]:
    """Close the test's clients, before its servers stop.

    Requesting ``start_server`` sets it up first, so it is torn down last:
    a server stopped with clients still open would send each a 1001 and wait
    for answers that a client nobody reads never gives.
    """
    from .support.clients import OPEN_RAW_CLIENTS  # support imports this module

    mark, raw_mark = len(_opened), len(OPEN_RAW_CLIENTS)  # wider-scoped fixtures' stay open
    yield
    while len(_opened) > mark:
        _opened.pop().shutdown()
    while len(OPEN_RAW_CLIENTS) > raw_mark:
        OPEN_RAW_CLIENTS.pop().close()


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    """Start ``app`` on a free port; every server is stopped at teardown."""
    servers: list[Server] = []

    def start(app, **options) -> Server:
        options.setdefault("access_log", False)
        server = serve(app, host="127.0.0.1", port=0, background=True, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(timeout=2)


@pytest.fixture
def opened(start_server) -> Iterator[Callable[[Any], None]]:
    """``opened(client)``: close that client at teardown, before the test's servers stop."""
    clients: list = []
    yield clients.append
    for client in clients:
        client.close()


def ws_url(server: Server, path: str = "/_ws") -> str:
    return server.url.replace("http://", "ws://", 1) + path


def connect(server: Server, path: str = "/_ws", **kwargs) -> websocket.WebSocket:
    kwargs.setdefault("timeout", 5)
    return websocket.create_connection(ws_url(server, path), **kwargs)


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is truthy; tests bound their waits so a hang fails fast."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def raw_request(server: Server, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server answers until it closes or idles."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and len(chunks) > 0:
                    sock.settimeout(0.5)
        except TimeoutError:
            pass
        return b"".join(chunks)


# -- channels: an endpoint on a real server, and clients closed at teardown ----------------
@pytest.fixture
def clients(opened) -> Callable[..., Client]:
    """``clients(url, **options)``: a channels Client with test-sized back-off, closed before the test's servers stop."""

    def make(url: str, **options: Any) -> Client:
        options.setdefault("timeout", 5)
        options.setdefault("backoff_base", 0.05)
        options.setdefault("backoff_cap", 0.5)
        client = Client(url, **options)
        opened(client)
        return client

    return make


@pytest.fixture
def endpoint(start_server) -> Callable[..., tuple[Any, str, Channels]]:
    """``endpoint(channels=None, **server_options)``: ``(server, its ws:// URL, the Channels)``."""

    def start(channels: Channels | None = None, **options: Any) -> tuple[Any, str, Channels]:
        channels = channels if channels is not None else Channels()
        app = App()
        app.get("/_syncws", channels)
        server = start_server(app, **options)
        return server, ws_url(server, "/_syncws"), channels

    return start
