"""The peer object the hooks see (SPEC §3).

A Peer is a thin, thread-safe face over its :class:`~syncws.session.Session`:
anything that touches gevent objects is handed to the server's hub, so a peer
may be used from a hook, another greenlet, or a plain OS thread.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Optional

from .payload import Outgoing
from .pubsub import fan_out

if TYPE_CHECKING:
    from werkzeug.wrappers import Request

    from .server import Server
    from .session import Session


class Peer:
    def __init__(
        self,
        session: "Session",
        request: "Request",
        namespace: str,
        context: dict,
        remote_address: Optional[str],
    ) -> None:
        self.id: str = str(uuid.uuid4())
        self.namespace = namespace
        self.context = context
        self.request = request
        self.remote_address = remote_address
        self._session = session
        self.server: "Server" = session.server

    # -- introspection -----------------------------------------------------
    @property
    def peers(self) -> frozenset["Peer"]:
        """Connected peers of this namespace, this one included (a snapshot)."""
        return self.server.registry.peers(self.namespace)

    @property
    def topics(self) -> frozenset[str]:
        return self.server.registry.topics_of(self)

    @property
    def websocket(self) -> "Session":
        """The connection object (socket, chosen ``protocol``, ``closed`` state)."""
        return self._session

    @property
    def buffered_amount(self) -> int:
        """Bytes queued for this peer and not yet written to its socket."""
        return self._session.outbox.buffered

    @property
    def closed(self) -> bool:
        return self._session.closed

    # -- sending -----------------------------------------------------------
    def send(self, data: Any, *, compress: Optional[bool] = None) -> None:
        """Send to this peer only.  ``compress`` is accepted for API parity and ignored."""
        self.server.call_in_hub(self.deliver, Outgoing(data))

    def deliver(self, outgoing: Outgoing) -> None:
        """Queue an already-serialised message (hub thread only)."""
        self._session.outbox.put(outgoing.frame)

    def subscribe(self, topic: str) -> None:
        if not self._session.closed:
            self.server.registry.subscribe(self, topic)

    def unsubscribe(self, topic: str) -> None:
        self.server.registry.unsubscribe(self, topic)

    def publish(self, topic: str, data: Any, *, compress: Optional[bool] = None) -> None:
        """Send to every *other* subscriber of ``topic`` in this namespace."""
        outgoing = Outgoing(data)
        self.server.call_in_hub(self._publish, topic, outgoing)

    def _publish(self, topic: str, outgoing: Outgoing) -> None:
        fan_out(self.server.registry.subscribers(topic, self.namespace), outgoing, exclude=self)
        self.server.broker.relay(self.namespace, topic, outgoing)

    # -- closing -----------------------------------------------------------
    def close(self, code: int = 1000, reason: str = "") -> None:
        """Graceful close: a close frame, then the socket once the client answers."""
        self.server.call_in_hub(self._session.close, code, reason)

    def terminate(self) -> None:
        """Drop the connection at once, without a close frame."""
        self.server.call_in_hub(self._session.abort)

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<Peer {self.id} {self.namespace!r}>"
