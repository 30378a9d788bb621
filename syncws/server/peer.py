"""The peer object the hooks see.

A Peer is a thin, thread-safe face over its session: anything that touches
gevent objects is handed to the server's hub, so a peer may be used from a
hook, another greenlet, or a plain OS thread.  It knows its session only
through :class:`SessionLink` (what it needs of it), so this module does not
import the session.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from ..base.threads import RealLock
from ..protocol.payload import Outgoing
from .runtime import Runtime


class _Outbox(Protocol):
    @property
    def buffered(self) -> int: ...

    def put(self, frame: bytes) -> bool: ...


class SessionLink(Protocol):
    """What a :class:`Peer` needs of its session (:class:`syncws.server.session.Session`)."""

    @property
    def runtime(self) -> Runtime: ...

    @property
    def outbox(self) -> _Outbox: ...

    @property
    def protocol(self) -> str | None: ...

    @property
    def socket(self) -> Any: ...

    @property
    def closed(self) -> bool: ...

    def close(self, code: int = ..., reason: str = ...) -> None: ...

    def abort(self) -> None: ...


_ID_LOCK = RealLock()


class Peer:
    def __init__(
        self,
        session: SessionLink,
        request: Any,
        namespace: str,
        context: dict[str, Any],
        remote_address: str | None,
    ) -> None:
        self._id: str | None = None
        self.namespace = namespace
        self.context = context
        #: The upgrade request (a werkzeug ``Request``).
        self.request = request
        self.remote_address = remote_address
        self._session = session
        self._runtime = session.runtime

    # -- introspection -----------------------------------------------------
    @property
    def id(self) -> str:
        """A uuid4 string, made on first use.

        Most handlers never read it, and uuid4 was 2-3% of a handshake's CPU.
        The lock makes two OS threads asking first agree on one id.
        """
        peer_id = self._id
        if peer_id is None:
            with _ID_LOCK:
                peer_id = self._id
                if peer_id is None:
                    peer_id = self._id = str(uuid.uuid4())
        return peer_id

    @property
    def server(self) -> Any:
        """The :class:`~syncws.Server` this peer is connected to."""
        return self._runtime.owner

    @property
    def peers(self) -> frozenset[Peer]:
        """Connected peers of this namespace, this one included (a snapshot)."""
        return self._runtime.registry.peers(self.namespace)

    @property
    def topics(self) -> frozenset[str]:
        return self._runtime.registry.topics_of(self)

    @property
    def websocket(self) -> SessionLink:
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
    def send(self, data: Any, *, compress: bool | None = None) -> None:
        """Send to this peer only.  ``compress`` is accepted for API parity and ignored."""
        self._runtime.call_in_hub(self.deliver, Outgoing(data))

    def deliver(self, outgoing: Outgoing) -> None:
        """Queue an already-serialised message (hub thread only)."""
        self._session.outbox.put(outgoing.frame)

    def subscribe(self, topic: str) -> None:
        if not self._session.closed:
            self._runtime.registry.subscribe(self, topic)

    def unsubscribe(self, topic: str) -> None:
        self._runtime.registry.unsubscribe(self, topic)

    def publish(self, topic: str, data: Any, *, compress: bool | None = None) -> None:
        """Send to every *other* subscriber of ``topic`` in this namespace (and other processes)."""
        self._runtime.call_in_hub(self._runtime.deliver, topic, Outgoing(data), self.namespace, self)

    # -- closing -----------------------------------------------------------
    def close(self, code: int = 1000, reason: str = "") -> None:
        """Graceful close: a close frame, then the socket once the client answers."""
        self._runtime.call_in_hub(self._session.close, code, reason)

    def terminate(self) -> None:
        """Drop the connection at once, without a close frame."""
        self._runtime.call_in_hub(self._session.abort)

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<Peer {self.id} {self.namespace!r}>"
