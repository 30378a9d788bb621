"""The peer object the hooks see.

A Peer is a thin, thread-safe face over its session: anything that touches
gevent objects is handed to the server's hub, so a peer may be used from a
hook, another greenlet, or a plain OS thread.  It knows its session only
through :class:`SessionLink` (what it needs of it), so this module does not
import the session.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from gevent.event import Event

from ..base.threads import RealLock, hub_only
from ..protocol.connection import Connection, check_close, check_ping
from ..protocol.deflate import Agreement
from ..protocol.frames import CloseCode
from ..protocol.payload import Outgoing
from ..pubsub.history import Recovery
from ..pubsub.registry import check_user
from .bridge import os_thread_id
from .runtime import Runtime

if TYPE_CHECKING:
    from opentelemetry.context import Context


class _Outbox(Protocol):
    @property
    def buffered(self) -> int: ...

    def put(self, frame: bytes) -> bool: ...

    def add_drain_waiter(self, threshold: int, callback: Callable[[], None]) -> None: ...

    def remove_drain_waiter(self, callback: Callable[[], None]) -> None: ...


class SessionLink(Protocol):
    """What a :class:`Peer` needs of its session (:class:`syncws.server.session.Session`)."""

    @property
    def runtime(self) -> Runtime: ...

    @property
    def outbox(self) -> _Outbox: ...

    @property
    def protocol(self) -> str: ...

    @property
    def url(self) -> str: ...

    @property
    def extensions(self) -> str: ...

    @property
    def ready_state(self) -> int: ...

    @property
    def socket(self) -> socket.socket: ...

    @property
    def closed(self) -> bool: ...

    @property
    def deflate(self) -> Agreement | None: ...

    @property
    def connection(self) -> Connection: ...

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
        #: The sans-I/O connection: it says which frame carries a message here, and
        #: whether anything may still be sent (the same object once the session ended).
        self._connection = session.connection
        self._user: str | None = None
        #: What the application knows of :attr:`user` (any JSON-able value), set with :meth:`identify`.
        self.user_info: Any = None
        #: Told ``(peer, topic)`` after ``server.unsubscribe(user, topic)`` removed a subscription of
        #: this peer (the channels layer tells its client); hub thread or any.
        self.on_revoked: Callable[[Peer, str], None] | None = None

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
    def user(self) -> str | None:
        """Who this peer is, once :meth:`identify` said so (the channels ``connect`` hook does); else None."""
        return self._user

    def identify(self, user: str | int | None, info: object = None) -> None:
        """Say which user this peer is, so ``server.disconnect(user=...)`` and ``server.unsubscribe`` find it.

        ``user``: a string or an integer (kept as its string), None to forget it.
        """
        if user is not None:
            user = check_user(user)
        if user != self._user:
            self._runtime.registry.identify(self, self._user, user)
            self._user = user
        self.user_info = info

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
    def trace_context(self) -> Context | None:
        """The OpenTelemetry context of this connection's ``syncws.upgrade`` span; None when not tracing."""
        return getattr(self._session, "trace_context", None)

    @property
    def buffered_amount(self) -> int:
        """Bytes queued for this peer and not yet written to its socket."""
        return self._session.outbox.buffered

    @property
    def closed(self) -> bool:
        return self._session.closed

    # -- sending -----------------------------------------------------------
    def send(self, data: object, *, compress: bool | None = None) -> bool:
        """Send to this peer only; False when the peer is closed (nothing is sent).

        True means the message was queued for the peer (from another thread:
        handed to the server while the peer was open; a close that comes
        first still drops it).  Sending to a closed peer is not an error: a
        peer may go at any moment, and a publisher should not have to race
        it; check the result when it matters.  ``compress`` matters on a
        connection that agreed to permessage-deflate: True compresses this
        message, False sends it as it is, None (the default) compresses it
        when it reaches ``compression_threshold``.
        """
        if self._session.closed:
            return False
        outgoing = Outgoing(data, compress)
        runtime = self._runtime
        bridge = runtime.bridge
        if bridge is not None and os_thread_id() == bridge.thread_id:
            self._send(outgoing)  # in the hub (a hook): what post_to_hub would do, two calls fewer per message
        else:
            runtime.post_to_hub(self._send, outgoing)
        return True

    @hub_only
    def _send(self, outgoing: Outgoing) -> None:
        counters = self._runtime.counters
        counters.messages_out += 1  # (Counters.sent, inline: this runs per message sent)
        counters.bytes_out += len(outgoing.payload)
        self.deliver(outgoing)

    @hub_only
    def deliver(self, outgoing: Outgoing) -> None:
        """Queue an already-serialised message (hub thread only).

        An enveloped subscription's publishes arrive here already enveloped:
        the fan-out resolves the envelope once per publish (``registry.fan_out``).
        """
        frame = self._connection.send(outgoing)
        if frame is not None:
            self._session.outbox.put(frame)

    def ping(self, data: str | bytes = b"") -> None:
        """Send a ping (the ``pong`` hook sees the answer); at most 125 bytes of data."""
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        check_ping(payload)  # here, so that the caller gets the error in every thread
        self._runtime.post_to_hub(self._ping, payload)

    @hub_only
    def _ping(self, payload: bytes) -> None:
        frame = self._connection.ping(payload)
        if frame is not None:
            self._session.outbox.put(frame)

    def wait_for_drain(self, threshold: int = 0, timeout: float | None = None) -> bool:
        """Wait until at most ``threshold`` bytes are queued for this peer, or it is closed.

        Backpressure for a producer: call it between sends and the producer
        goes no faster than the client reads.  Returns False when ``timeout``
        seconds passed first.  From a hook it holds this peer's next hooks
        (not other peers); from another greenlet or an OS thread it holds only
        the caller.
        """
        bridge = self._runtime.bridge
        if bridge is None or self._session.closed:
            return True
        outbox = self._session.outbox
        if bridge.in_hub_thread():
            event = Event()
            wake = event.set  # one bound method: the waiter is removed by identity
            outbox.add_drain_waiter(threshold, wake)
            try:
                return bool(event.wait(timeout))
            finally:
                outbox.remove_drain_waiter(wake)
        done = RealLock()
        done.acquire()
        release = done.release
        bridge.call(outbox.add_drain_waiter, threshold, release)
        if done.acquire(timeout=-1 if timeout is None else timeout):
            return True
        bridge.call(outbox.remove_drain_waiter, release)
        return False

    def subscribe(
        self, topic: str, *, since: str | None = None, envelope: bool = False, presence: object = None
    ) -> Recovery:
        """Receive the publishes to ``topic`` in this namespace.

        ``since``: the offset of the last publish this client saw; with
        history on, every stored publish after it is sent first, then live
        ones, with no duplicate and no gap (the result says whether
        everything was still there).  ``envelope=True``: publishes on this
        subscription arrive as JSON text ``{"topic", "offset", "data"}``, so
        the client learns the offsets.  ``presence``: the info others see in
        :meth:`presence` (any JSON-able value).
        """
        if self._session.closed:
            return Recovery()
        return self._runtime.subscribe(self, topic, since, presence, envelope)

    def unsubscribe(self, topic: str) -> None:
        self._runtime.registry.unsubscribe(self, topic)

    def presence(self, topic: str) -> list[dict[str, Any]]:
        """Who is subscribed to ``topic`` in this namespace, on every process: ``[{"id", "info"}]``."""
        return self._runtime.presence(topic, self.namespace)

    def publish(self, topic: str, data: object, *, compress: bool | None = None) -> None:
        """Send to every *other* subscriber of ``topic`` in this namespace (and other processes).

        ``compress`` as for :meth:`send`; the message is compressed at most
        once for all the recipients that agreed to the same window.
        """
        self._runtime.post_to_hub(self._runtime.deliver, topic, Outgoing(data, compress), self.namespace, self)

    # -- closing -----------------------------------------------------------
    def restart(self) -> None:
        """Ask the client to reconnect and resume (1012, service restart): what it missed cannot be delivered."""
        self.close(CloseCode.SERVICE_RESTART, "reconnect and resume")

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Graceful close: a close frame, then the socket once the client answers.

        ConfigurationError (a ValueError) for a code or reason that may not
        be sent, from any thread; a no-op once the peer is closing.
        """
        check_close(code, reason)
        self._runtime.post_to_hub(self._session.close, code, reason)

    def terminate(self) -> None:
        """Drop the connection at once, without a close frame."""
        self._runtime.post_to_hub(self._session.abort)

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<Peer {self.id} {self.namespace!r}>"
