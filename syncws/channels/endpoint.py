"""The server side of the channels protocol: one WebSocket handler, configured with hooks.

Each connection starts with the client's ``connect`` request, whose token
the ``connect`` hook checks; after that the client subscribes (with
recovery), publishes, reads presence and history, and calls RPC methods,
each checked by ``authorize``.  Timers (the connect deadline, the refresh
request and the expiry, the heartbeat) are one hub timer per connection,
re-armed for the earliest of them; RPCs run each in a greenlet (in the
thread pool when the handler's hooks run there), so a slow method never
holds the connection's other requests.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import gevent
from werkzeug.wrappers import Request as HTTPRequest
from werkzeug.wrappers import Response

from ..base.errors import BrokerError, ConfigurationError, Refused, RPCError, ServerNotRunning
from ..base.options import check_overrides
from ..base.threads import RealLock
from ..protocol import channels as wire
from ..protocol.channels import Action, BadRequest, Close, ErrorCode, Incoming, Push, Request
from ..protocol.message import Message
from ..protocol.payload import Outgoing
from ..server.handler import WebSocketHandler, prepare_frameworks
from ..server.hooks import CloseDetails, Hooks
from ..server.peer import Peer

log = logging.getLogger("syncws.channels")

#: The companion topic a subscription's join and leave events are published on.
PRESENCE_PREFIX = "$presence:"
#: The longest topic a client may name.
MAX_TOPIC_LENGTH = 256
#: The most publishes one ``history`` request returns.
MAX_HISTORY_LIMIT = 1000

_PING = Outgoing({"type": Push.PING})  # serialised and framed once for every connection

Hook = Callable[..., Any]


def _default_authorize(peer: Peer, action: str, topic: str) -> bool:
    """Subscribing and reading are allowed; publishing from clients is opt-in."""
    return action != Action.PUBLISH


class _State:
    """One connection's protocol state (its hooks run one at a time; timers in the hub)."""

    __slots__ = (
        "asked",
        "connected",
        "deadline",
        "events",
        "expires_at",
        "next_ping",
        "peer",
        "rpcs",
        "timer",
        "topics",
    )

    def __init__(self, peer: Peer, deadline: float, next_ping: float) -> None:
        self.peer = peer
        self.connected = False
        self.deadline = deadline  # the connect request must arrive by then
        self.expires_at: float | None = None
        self.asked = False  # a refresh was requested for the current expiry
        self.next_ping = next_ping
        self.topics: set[str] = set()  # the client's subscriptions
        self.events: set[str] = set()  # ... of those, the ones with join/leave events
        self.rpcs = 0  # RPCs running
        self.timer: Any = None


def _check_settings(hooks: dict[str, object], counts: dict[str, object], seconds: dict[str, object]) -> None:
    """TypeError for a hook that is not callable, ConfigurationError for a count or a duration out of range."""
    for name, hook in hooks.items():
        if hook is not None and not callable(hook):
            raise TypeError(f"hook {name!r} must be callable, got {type(hook).__name__}")
    for name, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigurationError(f"{name} must be a positive integer, not {value!r}")
    for name, value in seconds.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")


class Channels(WebSocketHandler):
    """The channels endpoint: route it like any WebSocket handler (``app.get("/_syncws", channels)``).

    Hooks (all optional):

    * ``connect(request, token)``: who the client is.  Return a mapping with
      ``user`` (a string or an integer), optionally ``info`` (JSON-able) and
      ``expires_in`` (seconds the credentials are good for); ``True`` for an
      anonymous connection; ``None``/``False`` or raise :class:`~syncws.Refused`
      to refuse (close 4001, not retried).  Another exception closes with
      1011, which clients retry.  Without the hook every client is anonymous.
    * ``authorize(peer, action, topic)``: ``action`` is ``subscribe``,
      ``publish``, ``presence`` or ``history``; return True/False or raise
      :class:`~syncws.Refused` with a reason.  Default: everything but
      ``publish``.
    * ``refresh(peer, token)``: a fresh token for an expiring connection;
      returns as ``connect`` does.  Default: ``connect(peer.request, token)``,
      which must name the same user.
    * ``message(peer, data)``: a ``message`` request's data, or a binary frame's bytes.
    * ``open(peer)``, after a successful connect; ``close(peer, details)``.

    RPC methods: ``@channels.rpc("name")`` on ``fn(peer, params) -> result``.

    Bounds: ``max_subscriptions`` per connection (128), ``max_pending_rpcs``
    (16) running at once per connection, ``connect_timeout`` (10 s) for the
    connect request, ``heartbeat`` (25 s) between the pings a client uses to
    notice a dead server, ``refresh_window`` (10 s) before expiry when the
    server asks for a new token.  Other keywords are the handler's options
    (``max_message_size``, ``rate_limit``, ...).
    """

    def __init__(
        self,
        *,
        connect: Hook | None = None,
        authorize: Hook | None = None,
        refresh: Hook | None = None,
        message: Hook | None = None,
        open: Hook | None = None,
        close: Hook | None = None,
        max_subscriptions: int = 128,
        max_pending_rpcs: int = 16,
        connect_timeout: float = 10.0,
        heartbeat: float = 25.0,
        refresh_window: float = 10.0,
        **options: Any,
    ) -> None:
        hooks = {"connect": connect, "authorize": authorize, "refresh": refresh, "message": message}
        _check_settings(
            {**hooks, "open": open, "close": close},
            {"max_subscriptions": max_subscriptions, "max_pending_rpcs": max_pending_rpcs},
            {"connect_timeout": connect_timeout, "heartbeat": heartbeat, "refresh_window": refresh_window},
        )
        self._connect_hook = connect
        self._authorize = authorize or _default_authorize
        self._refresh_hook = refresh
        self._message_hook = message
        self._open_hook = open
        self._close_hook = close
        self.max_subscriptions = max_subscriptions
        self.max_pending_rpcs = max_pending_rpcs
        self.connect_timeout = float(connect_timeout)
        self.heartbeat = float(heartbeat)
        self.refresh_window = float(refresh_window)
        self._rpcs: dict[str, Hook] = {}
        self._states: dict[Peer, _State] = {}
        self._lock = RealLock()  # the RPC counts: RPCs end in greenlets or pool threads
        prepare_frameworks()
        own = Hooks(upgrade=self._on_upgrade, open=self._on_open, message=self._on_message, close=self._on_close)
        super().__init__(own, check_overrides(options))

    # -- configuration --------------------------------------------------------------------
    def rpc(self, name: str) -> Callable[[Hook], Hook]:
        """Register ``fn(peer, params) -> result`` as the RPC method ``name`` (a decorator)."""
        if not isinstance(name, str) or not name:
            raise ConfigurationError("an RPC method's name is a non-empty string")

        def register(fn: Hook) -> Hook:
            if not callable(fn):
                raise TypeError(f"an RPC method must be callable, got {type(fn).__name__}")
            self._rpcs[name] = fn
            return fn

        return register

    def send(self, peer: Peer, data: object) -> bool:
        """Send ``data`` (JSON-able) to one client as a ``message`` push; False when it is closed."""
        return peer.send({"type": Push.MESSAGE, "data": data})

    # -- hooks of the WebSocket handler ---------------------------------------------------
    def _on_upgrade(self, request: HTTPRequest) -> object:
        if wire.SUBPROTOCOL not in _offered(request):
            return Response(f"offer the WebSocket subprotocol {wire.SUBPROTOCOL}", status=400)
        return {"protocol": wire.SUBPROTOCOL}

    def _on_open(self, peer: Peer) -> None:
        now = time.monotonic()
        state = _State(peer, now + self.connect_timeout, now + self.heartbeat)
        self._states[peer] = state
        peer.on_revoked = self._revoked
        peer.server.call_in_hub(self._arm, state)  # timers live in the hub (this hook may run in a pool thread)

    def _on_close(self, peer: Peer, details: CloseDetails) -> None:
        state = self._states.pop(peer, None)
        if state is None:
            return
        peer.server.call_in_hub(_stop_timer, state)
        for topic in state.topics:
            self._announce(peer, topic, Push.LEAVE)
        if state.connected and self._close_hook is not None:
            self._close_hook(peer, details)

    def _on_message(self, peer: Peer, message: Message) -> None:
        state = self._states.get(peer)
        if state is None:
            return
        if message.is_binary:
            if not state.connected:
                peer.close(Close.PROTOCOL_ERROR, "connect first")
            elif self._message_hook is not None:
                self._message_hook(peer, message.bytes())
            return
        try:
            request = wire.parse_request(message.text())
            if not state.connected and request.type != Request.CONNECT:
                raise BadRequest("connect first")
            self._dispatch(state, request)
        except BadRequest as exc:
            if not state.connected:
                peer.close(Close.PROTOCOL_ERROR, str(exc)[:100])
            else:
                peer.send(wire.error(exc.id, ErrorCode.BAD_REQUEST, str(exc)))

    # -- requests -------------------------------------------------------------------------
    def _dispatch(self, state: _State, request: Incoming) -> None:
        """Run the request's handler; its reply (or error) goes out when the request has an id."""
        outcome = _HANDLERS[request.type](self, state, request)
        if request.id is not None and outcome is not None:
            state.peer.send(outcome)

    def _connect(self, state: _State, request: Incoming) -> dict[str, Any] | None:
        peer = state.peer
        if state.connected:
            raise BadRequest("already connected", request.id)
        if request.id is None:
            raise BadRequest("connect needs an id")
        token = wire.field(request, "token", str)
        try:
            identity = self._identify(peer.request, token)
        except Refused as exc:
            peer.close(Close.UNAUTHORIZED, exc.reason[:100] or "unauthorized")
            return None
        except Exception:
            log.exception("syncws: the channels connect hook failed")
            peer.close(1011, "connect failed")
            return None
        user, info, expires_in = identity
        peer.identify(user, info)
        state.connected = True
        self._expire_in(state, expires_in)
        result = {
            "client": peer.id,
            "user": peer.user,
            "info": info,
            "expires_in": expires_in,
            "ping": self.heartbeat,
            "version": 1,
        }
        peer.send(wire.reply(request.id, result))
        if self._open_hook is not None:
            self._open_hook(peer)
        return None

    def _identify(self, request: HTTPRequest, token: str | None) -> tuple[str | None, Any, float | None]:
        """Run ``connect``; ``(user, info, expires_in)``, or :class:`Refused`."""
        if self._connect_hook is None:
            return None, None, None
        return _identity(self._connect_hook(request, token))

    def _refresh(self, state: _State, request: Incoming) -> dict[str, Any] | None:
        peer = state.peer
        token = wire.field(request, "token", str)
        if token is None:
            raise BadRequest("refresh needs a token", request.id)
        try:
            if self._refresh_hook is not None:
                user, info, expires_in = _identity(self._refresh_hook(peer, token))
            else:
                user, info, expires_in = self._identify(peer.request, token)
                if user != peer.user:
                    raise Refused("the token names another user")
        except Refused as exc:
            peer.close(Close.UNAUTHORIZED, exc.reason[:100] or "unauthorized")
            return None
        except Exception:
            log.exception("syncws: the channels refresh hook failed")
            return wire.error(request.id, ErrorCode.INTERNAL, "internal error")
        if info is not None:
            peer.user_info = info
        self._expire_in(state, expires_in)
        return wire.reply(request.id, {"expires_in": expires_in})

    def _subscribe(self, state: _State, request: Incoming) -> dict[str, Any] | None:
        peer = state.peer
        topic = _topic(request)
        since = wire.field(request, "since", str)
        events = wire.field(request, "presence_events", bool, False)
        if topic not in state.topics and len(state.topics) >= self.max_subscriptions:
            return wire.error(request.id, ErrorCode.LIMIT, f"at most {self.max_subscriptions} subscriptions")
        refusal = self._check(peer, Action.SUBSCRIBE, topic, request)
        if refusal is not None:
            return refusal
        if events:
            peer.subscribe(PRESENCE_PREFIX + topic)
            state.events.add(topic)
        elif topic in state.events:
            peer.unsubscribe(PRESENCE_PREFIX + topic)
            state.events.discard(topic)
        presence = {"user": peer.user, "info": peer.user_info}
        recovery = peer.subscribe(topic, since=since, envelope=True, presence=presence)
        if topic not in state.topics:
            state.topics.add(topic)
            self._announce(peer, topic, Push.JOIN)
        result = {"recovered": recovery.recovered, "replayed": recovery.replayed, "offset": recovery.offset}
        return wire.reply(request.id, result)

    def _unsubscribe(self, state: _State, request: Incoming) -> dict[str, Any] | None:
        topic = _topic(request)
        self._drop(state, topic)
        return wire.reply(request.id, {})

    def _drop(self, state: _State, topic: str) -> None:
        peer = state.peer
        if topic in state.events:
            state.events.discard(topic)
            peer.unsubscribe(PRESENCE_PREFIX + topic)
        if topic in state.topics:
            state.topics.discard(topic)
            peer.unsubscribe(topic)
            self._announce(peer, topic, Push.LEAVE)

    def _revoked(self, peer: Peer, topic: str) -> None:
        state = self._states.get(peer)
        if state is not None and topic in state.topics:
            self._drop(state, topic)
            peer.send({"type": Push.UNSUBSCRIBED, "topic": topic, "reason": "revoked"})

    def _announce(self, peer: Peer, topic: str, kind: Push) -> None:
        event = {"type": kind, "topic": topic, "client": peer.id, "user": peer.user, "info": peer.user_info}
        try:
            peer.server.publish(PRESENCE_PREFIX + topic, event, namespace=peer.namespace)
        except ServerNotRunning:
            pass  # the server stopped: nobody is left to tell

    def _publish(self, state: _State, request: Incoming) -> dict[str, Any] | None:
        peer = state.peer
        topic = _topic(request)
        if "data" not in request.body:
            raise BadRequest("publish needs data", request.id)
        exclude_self = wire.field(request, "exclude_self", bool, False)
        refusal = self._check(peer, Action.PUBLISH, topic, request)
        if refusal is not None:
            return refusal
        data = request.body["data"]
        if exclude_self:
            peer.publish(topic, data)
        else:
            peer.server.publish(topic, data, namespace=peer.namespace)
        return wire.reply(request.id, {})

    def _presence(self, state: _State, request: Incoming) -> dict[str, Any] | None:
        peer = state.peer
        topic = _topic(request)
        by_user = wire.field(request, "by_user", bool, False)
        refusal = self._check(peer, Action.PRESENCE, topic, request)
        if refusal is not None or request.id is None:
            return refusal
        members = []
        seen: set[str] = set()
        for entry in peer.presence(topic):
            info = entry["info"] if isinstance(entry["info"], dict) else {}
            user = info.get("user")
            if by_user and user is not None:
                if user in seen:
                    continue
                seen.add(user)
            members.append({"client": entry["id"], "user": user, "info": info.get("info")})
        return wire.reply(request.id, {"members": members})

    def _history(self, state: _State, request: Incoming) -> dict[str, Any] | None:
        peer = state.peer
        topic = _topic(request)
        since = wire.field(request, "since", str)
        limit = wire.field(request, "limit", int, MAX_HISTORY_LIMIT)
        if limit < 0:
            raise BadRequest("limit must be 0 or more", request.id)
        refusal = self._check(peer, Action.HISTORY, topic, request)
        if refusal is not None or request.id is None:
            return refusal
        try:
            entries = peer.server.history(topic, peer.namespace, since, min(limit, MAX_HISTORY_LIMIT))
        except BrokerError:
            return wire.error(request.id, ErrorCode.UNAVAILABLE, "the history cannot be read now")
        publications = [_publication(entry.offset, entry.data) for entry in entries]
        return wire.reply(request.id, {"publications": publications})

    def _rpc(self, state: _State, request: Incoming) -> dict[str, Any] | None:
        method = wire.field(request, "method", str)
        if method is None:
            raise BadRequest("rpc needs a method", request.id)
        if request.id is None:
            raise BadRequest("rpc needs an id", request.id)
        fn = self._rpcs.get(method)
        if fn is None:
            return wire.error(request.id, ErrorCode.NOT_FOUND, f"no RPC method {method[:40]!r}")
        with self._lock:
            if state.rpcs >= self.max_pending_rpcs:
                return wire.error(request.id, ErrorCode.LIMIT, f"at most {self.max_pending_rpcs} RPCs at once")
            state.rpcs += 1
        peer = state.peer
        params = request.body.get("params")
        runtime = peer.server.runtime
        threaded = runtime.hooks_threaded(self.options_for(runtime))

        def call() -> None:
            try:
                tracer = runtime.active_tracer
                if tracer is None:
                    peer.send(_call(fn, peer, params, request.id, method))
                    return
                attributes = {"rpc.system": "syncws", "rpc.method": method, "syncws.connection": peer.id}
                with tracer.span("syncws.rpc", attributes, peer.trace_context, tracer.SERVER) as span:
                    reply = _call(fn, peer, params, request.id, method)
                    if "error" in reply:
                        span.set_attribute("syncws.error", reply["error"]["code"])
                peer.send(reply)
            finally:
                with self._lock:
                    state.rpcs -= 1

        def run() -> None:
            if threaded:
                runtime.run_in_thread(call)
            else:
                call()

        peer.server.call_in_hub(gevent.spawn, run)
        return None

    def _message(self, state: _State, request: Incoming) -> dict[str, Any] | None:
        if self._message_hook is not None:
            self._message_hook(state.peer, request.body.get("data"))
        return wire.reply(request.id, {})

    def _pong(self, state: _State, request: Incoming) -> dict[str, Any] | None:
        return None

    def _check(self, peer: Peer, action: Action, topic: str, request: Incoming) -> dict[str, Any] | None:
        """None when ``authorize`` allows ``action`` on ``topic``, else the error reply."""
        try:
            allowed = self._authorize(peer, str(action), topic)
        except Refused as exc:
            return wire.error(request.id, ErrorCode.FORBIDDEN, exc.reason[:100] or f"{action} refused")
        if allowed is True:
            return None
        return wire.error(request.id, ErrorCode.FORBIDDEN, f"{action} refused")

    # -- timers (hub thread) ---------------------------------------------------------------
    def _expire_in(self, state: _State, expires_in: float | None) -> None:
        state.expires_at = None if expires_in is None else time.monotonic() + expires_in
        state.asked = False
        state.peer.server.call_in_hub(self._arm, state)

    def _arm(self, state: _State) -> None:
        """Start (again) the connection's one timer, for the earliest thing due."""
        _stop_timer(state)
        if state.peer not in self._states:
            return
        due = state.next_ping if state.connected else min(state.next_ping, state.deadline)
        if state.expires_at is not None:
            due = min(due, state.expires_at if state.asked else state.expires_at - self.refresh_window)
        timer = gevent.get_hub().loop.timer(max(0.0, due - time.monotonic()))
        timer.start(self._tick, state)
        state.timer = timer

    def _tick(self, state: _State) -> None:
        peer = state.peer
        now = time.monotonic()
        if peer not in self._states:
            return
        if not state.connected and now >= state.deadline:
            peer.close(Close.PROTOCOL_ERROR, "no connect request in time")
            return
        if state.expires_at is not None:
            if now >= state.expires_at:
                peer.close(Close.EXPIRED, "credentials expired")
                return
            if not state.asked and now >= state.expires_at - self.refresh_window:
                state.asked = True
                peer.send({"type": Push.REFRESH})
        if now >= state.next_ping:
            state.next_ping = now + self.heartbeat
            peer.deliver(_PING)
        self._arm(state)


def _stop_timer(state: _State) -> None:
    timer, state.timer = state.timer, None
    if timer is not None:
        timer.close()


def _offered(request: HTTPRequest) -> list[str]:
    header = request.headers.get("Sec-WebSocket-Protocol", "")
    return [part.strip() for part in header.split(",") if part.strip()]


def _identity(outcome: object) -> tuple[str | None, Any, float | None]:
    """What ``connect``/``refresh`` returned, as ``(user, info, expires_in)``; :class:`Refused` for a refusal."""
    if outcome is True:
        return None, None, None
    if outcome is None or outcome is False:
        raise Refused("unauthorized")
    if not isinstance(outcome, Mapping):
        raise TypeError(f"connect and refresh return a mapping, True, False or None, not {type(outcome).__name__}")
    unknown = set(outcome) - {"user", "info", "expires_in"}
    if unknown:
        raise TypeError(f"connect returned unknown key(s): {', '.join(sorted(map(str, unknown)))}")
    expires_in = outcome.get("expires_in")
    if expires_in is not None and (
        not isinstance(expires_in, (int, float)) or isinstance(expires_in, bool) or expires_in <= 0
    ):
        raise TypeError(f"expires_in must be a positive number of seconds, not {expires_in!r}")
    user = outcome.get("user")
    return (None if user is None else str(user)), outcome.get("info"), expires_in


def _topic(request: Incoming) -> str:
    topic: str | None = wire.field(request, "topic", str)
    if not topic or len(topic) > MAX_TOPIC_LENGTH:
        raise BadRequest(f"topic must be a string of 1 to {MAX_TOPIC_LENGTH} characters", request.id)
    if topic.startswith("$"):
        raise BadRequest("topics starting with $ are reserved", request.id)
    return topic


def _publication(offset: str, data: object) -> dict[str, Any]:
    if isinstance(data, bytes):
        return {"offset": offset, "data": base64.b64encode(data).decode("ascii"), "encoding": "base64"}
    return {"offset": offset, "data": data}


def _call(fn: Hook, peer: Peer, params: object, request_id: str | int | None, method: str) -> dict[str, Any]:
    """Run one RPC method; its reply (a result or a structured error)."""
    try:
        result = fn(peer, params)
        Outgoing(result)  # JSON-able? (a TypeError is the method's bug, logged below)
        return wire.reply(request_id, result)
    except RPCError as exc:
        return {"id": request_id, "error": {"code": exc.code, "message": exc.message}}
    except Exception:
        log.exception("syncws: RPC method %r failed", method)
        return wire.error(request_id, ErrorCode.INTERNAL, "internal error")


_HANDLERS: dict[Request, Callable[[Channels, _State, Incoming], dict[str, Any] | None]] = {
    Request.CONNECT: Channels._connect,
    Request.SUBSCRIBE: Channels._subscribe,
    Request.UNSUBSCRIBE: Channels._unsubscribe,
    Request.PUBLISH: Channels._publish,
    Request.PRESENCE: Channels._presence,
    Request.HISTORY: Channels._history,
    Request.RPC: Channels._rpc,
    Request.REFRESH: Channels._refresh,
    Request.MESSAGE: Channels._message,
    Request.PONG: Channels._pong,
}
