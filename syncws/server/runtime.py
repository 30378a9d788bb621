"""What a running server shares with its connections, and nothing more.

Sessions, event streams, the HTTP handler and the keepalive ticker need a few
things from the server: its options, the pub/sub registry, the sets of open
connections, whether a stop has begun, and a way into the hub and into the
hook thread pool.  :class:`Runtime` holds exactly that.  The
:class:`~syncws.server.server.Server` builds one and owns its lifecycle; the
lower modules import this module, never the server, so the layers have no
import cycle and a session can be driven in a test with a bare runtime.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import gevent
from gevent.threadpool import ThreadPool

from ..base.errors import ServerNotRunning
from ..base.options import ServerOptions
from ..protocol.payload import Outgoing
from ..pubsub.broker import Broker
from ..pubsub.registry import Registry, Subscriber, fan_out
from .bridge import HubBridge
from .keepalive import Keepalive
from .outbox import Flusher


class Runtime:
    """The state shared by one server and its connections (hub thread unless noted)."""

    def __init__(self, options: ServerOptions, broker: Broker, owner: Any = None) -> None:
        self.options = options
        self.broker = broker
        self.registry = Registry()
        self.registry.on_interest = broker.interest
        #: The public object that owns this runtime (``peer.server``).
        self.owner = owner
        self.sessions: set[Any] = set()  # open WebSocket sessions
        self.streams: set[Any] = set()  # open event streams
        self.requests_in_flight = 0  # requests being answered (sessions and streams included)
        self.stopping = False  # a stop has begun: new upgrades get 503
        self.finished = False  # the stop is over
        self.bridge: HubBridge | None = None
        self.flusher: Flusher | None = None
        self.keepalive: Keepalive | None = None
        self._hook_pool: ThreadPool | None = None

    def call_in_hub(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the server's hub (any thread); a no-op once it has stopped."""
        bridge = self.bridge
        if bridge is not None:
            bridge.call(fn, *args)

    def require_bridge(self) -> HubBridge:
        bridge = self.bridge
        if bridge is None:
            raise ServerNotRunning("the server is not running")
        return bridge

    # -- pub/sub -------------------------------------------------------------------------
    def deliver(self, topic: str, outgoing: Outgoing, namespace: str | None, exclude: Subscriber | None = None) -> None:
        """A local publish (hub thread): local subscribers first, then the broker relays it."""
        self._deliver_local(topic, outgoing, namespace, exclude)
        self.broker.relay(namespace, topic, outgoing)

    def deliver_relayed(self, namespace: str | None, topic: str, outgoing: Outgoing) -> None:
        """A publish from another process (any thread): local subscribers only, never relayed."""
        self.call_in_hub(self._deliver_local, topic, outgoing, namespace)

    def _deliver_local(
        self, topic: str, outgoing: Outgoing, namespace: str | None, exclude: Subscriber | None = None
    ) -> None:
        fan_out(self.registry.subscribers(topic, namespace), outgoing, exclude=exclude)

    # -- hooks in threads ------------------------------------------------------------------
    def run_in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in the hook thread pool; block only the calling greenlet.

        Hub thread only.  The caller's context variables go along (a Flask app
        or request context, for instance); the result is returned and an
        exception, ``SystemExit`` included, re-raised here.
        """
        if self.finished:
            return fn(*args)  # the pool is gone; a last close hook runs here
        pool = self._hook_pool
        if pool is None:
            pool = self._hook_pool = ThreadPool(self.options.hook_threads, hub=gevent.get_hub())
        ok, value = pool.apply(_run_captured, (contextvars.copy_context(), fn, args))
        if ok:
            return value
        raise value

    def stop_hook_threads(self) -> None:
        """Idle threads exit; a hook still running finishes in its thread."""
        pool, self._hook_pool = self._hook_pool, None
        if pool is not None:
            pool.kill()


def _run_captured(context: contextvars.Context, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[bool, Any]:
    # In a pool thread: hand back (ok, result or exception) so that any
    # exception, SystemExit included, reaches the hook's caller in the hub.
    try:
        return True, context.run(fn, *args)
    except BaseException as exc:
        return False, exc
