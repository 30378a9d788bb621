"""A pytest fixture for users' tests: ``syncws_client(app, **server_options)``.

Registered as a pytest plugin when syncws is installed (the ``pytest11``
entry point), so a test can ask for it without importing anything::

    def test_echo(syncws_client):
        client = syncws_client(app)
        with client.websocket("/_ws") as ws:
            ws.send("hi")
            assert ws.receive() == "hi"

Every client the fixture started is stopped when the test ends.  The
fixture is a convenience: ``syncws.testing.TestClient`` works without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .testing import TestClient


@pytest.fixture
def syncws_client() -> Iterator[Callable[..., TestClient]]:
    """Start a :class:`~syncws.testing.TestClient` for an app; stopped at the end of the test."""
    started: list[TestClient] = []

    def start(app: Any, **server_options: Any) -> TestClient:
        client = TestClient(app, **server_options).__enter__()
        started.append(client)
        return client

    yield start
    for client in reversed(started):
        client.__exit__(None, None, None)
