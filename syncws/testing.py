"""``syncws.testing``: the test client, under its public name (see :mod:`syncws.integrations.testing`)."""

from .integrations.testing import (
    ConnectionClosed,
    Event,
    EventStream,
    HandshakeRefused,
    Response,
    TestClient,
    WebSocket,
)

__all__ = ["ConnectionClosed", "Event", "EventStream", "HandshakeRefused", "Response", "TestClient", "WebSocket"]
