"""``define_websocket_handler`` and the WSGI callable it returns.

The handler *is* a WSGI application.  That is what lets the application decide
the upgrade: a syncws ``App`` route, a Flask view (Flask turns a returned WSGI
callable into a response by calling it inside its request context) or a plain
WSGI function calls it, it runs the ``upgrade`` hook, and only when that hook
accepts does it write the ``101`` through the transport the syncws server put
in the environ.  Otherwise it answers like any WSGI app: nothing was upgraded.
"""

from __future__ import annotations

import contextvars
import importlib
import io
import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import gevent
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from ..base.errors import ConfigurationError, HandshakeError
from ..base.options import BY_NAME, PER_HANDLER, ServerOptions, check_overrides, did_you_mean, origin_allowed
from ..base.tracing import Tracer
from ..protocol import deflate, handshake
from .hooks import HOOK_NAMES, Hooks
from .http import TRANSPORT_KEY, Transport
from .runtime import Runtime
from .session import Session

log = logging.getLogger("syncws")

_UPGRADE_KEYS = {"headers", "namespace", "context", "protocol"}
_warned_no_transport = False

#: Run before the first handler is defined and when a server is built.
#: Integrations register here (the Flask one teaches Flask to route upgrade
#: requests as plain GETs), so this layer never imports them and nothing is
#: patched merely by importing syncws.
FRAMEWORK_PREPARERS: list[Callable[[], None]] = []
#: The integration to load (by name: it sits in a layer above) once its framework is imported.
_PREPARER_MODULES = {"flask": "syncws.integrations.flask"}


def prepare_frameworks() -> None:
    for framework, module in _PREPARER_MODULES.items():
        if framework in sys.modules:
            importlib.import_module(module)  # registers its preparer (once: imports are cached)
    for prepare in FRAMEWORK_PREPARERS:
        prepare()


RETRY_AFTER = 5  # seconds, on the 503 that answers upgrades while the server stops


def _text_response(status: int, text: str, headers: list[Any] | None = None) -> Response:
    return Response(text + "\n", status=status, headers=headers or [], mimetype="text/plain")


class WebSocketHandler:
    """A set of hooks, callable as a WSGI application."""

    def __init__(self, hooks: Hooks, overrides: Mapping[str, Any] | None = None) -> None:
        self.hooks = hooks
        #: Settings that replace the server's for this handler's connections.
        self.overrides: dict[str, Any] = dict(overrides or {})
        self._resolved: tuple[ServerOptions, ServerOptions] | None = None

    def options_for(self, runtime: Runtime) -> ServerOptions:
        """The server's options with this handler's overrides, resolved once per server.

        Every setting a connection of this handler uses is read from here:
        one object, no per-setting lookup of the overrides.
        """
        resolved = self._resolved
        if resolved is None or resolved[0] is not runtime.options:
            resolved = self._resolved = (runtime.options, runtime.options.overridden(self.overrides))
        return resolved[1]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Run the connection inside this call (what a framework's view gets).

        The session lives for the duration of the call, so whatever the caller
        set up around it (Flask's request context, say) holds for every hook,
        and the caller's teardown runs when the WebSocket closes.
        """
        return self._respond(environ, start_response, detach=False)

    def detached(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Like calling the handler, but the session runs in a greenlet of its own.

        For callers with nothing around the call that the hooks rely on
        (syncws's ``App`` and ``mount``): the HTTP request's greenlet ends at
        the upgrade, which makes an idle connection about a quarter cheaper
        (see :meth:`Transport.hand_over <syncws.server.http.Transport.hand_over>`).
        """
        return self._respond(environ, start_response, detach=True)

    def _respond(self, environ: dict[str, Any], start_response: Callable[..., Any], detach: bool) -> Iterable[bytes]:
        response = self._handshake(environ, detach)
        if response is not None:
            return response(environ, start_response)
        start_response("101 Switching Protocols", [])
        return []

    def _handshake(self, environ: dict[str, Any], detach: bool = False) -> Response | None:
        """Run (or hand over) the connection; return a Response when nothing was upgraded."""
        outcome = self.accept(environ)
        if isinstance(outcome, Session):
            # In a pool thread the session already runs in the hub (see _upgrade): the view
            # returns and its thread is free.
            if not _in_pool_thread(outcome.runtime) and not (detach and environ[TRANSPORT_KEY].hand_over(outcome.run)):
                outcome.run()
            return None
        response: Response | None = outcome
        transport = environ.get(TRANSPORT_KEY)
        if response is not None and transport is not None:
            transport.runtime.refuse(response.status_code)
        return response

    def accept(self, environ: dict[str, Any]) -> Any:
        """Validate, run the ``upgrade`` hook and write the ``101``.

        Returns the :class:`Session` to run when the connection was upgraded,
        a ``Response`` when it was not, or None when the client left during
        the handshake.  (``syncws.compat`` runs the session itself.)
        """
        if not handshake.is_upgrade_request(environ):
            return _text_response(
                426,
                "This endpoint speaks WebSocket: connect with a WebSocket client.",
                [("Upgrade", "websocket"), ("Connection", "Upgrade")],
            )
        transport = environ.get(TRANSPORT_KEY)
        if transport is None:
            return self._no_transport(environ)
        try:
            key = handshake.validate(environ)
            options = self.options_for(transport.runtime)
            agreement = self._negotiate_compression(environ, options)
        except HandshakeError as exc:
            # Close after the answer: a refused upgrade may carry a body we never read.
            transport.reusable = False
            return _text_response(exc.status, exc.message, exc.headers)
        runtime = transport.runtime
        if runtime.stopping:
            return _shutting_down(transport)
        origin = environ.get("HTTP_ORIGIN")
        if not origin_allowed(options.allowed_origins, origin):
            log.info("syncws: WebSocket upgrade from origin %r refused (allowed_origins)", origin)
            transport.reusable = False
            return _text_response(403, "Origin not allowed")

        address = transport.remote_address
        refused = runtime.admit(address)
        if refused is not None:
            return over_capacity(transport, refused)
        try:
            tracer = runtime.active_tracer
            if tracer is None:
                outcome = self._upgrade(environ, transport, key, agreement)
            else:
                outcome = self._traced_upgrade(tracer, environ, transport, key, agreement)
        except BaseException:
            runtime.release(address)
            raise
        if not isinstance(outcome, Session):
            runtime.release(address)  # refused by the hook, or the client left: the slot is free again
        return outcome

    def _traced_upgrade(
        self,
        tracer: Tracer,
        environ: dict[str, Any],
        transport: Transport,
        key: str,
        agreement: deflate.Agreement | None,
    ) -> Any:
        """:meth:`_upgrade` in a ``syncws.upgrade`` span, a child of the request's ``traceparent``."""
        attributes = {"url.path": environ.get("PATH_INFO", "/"), "client.address": transport.remote_address or ""}
        with tracer.span("syncws.upgrade", attributes, tracer.extract(environ), tracer.SERVER) as span:
            outcome = self._upgrade(environ, transport, key, agreement)
            if isinstance(outcome, Session):
                span.set_attribute("http.response.status_code", 101)
                span.set_attribute("syncws.namespace", outcome.peer.namespace)
                if span.get_span_context().is_valid:  # sampled or not: its RPCs follow its decision
                    outcome.trace_context = tracer.context_of(span)  # the parent of the connection's later spans
            elif outcome is not None:
                span.set_attribute("http.response.status_code", int(getattr(outcome, "status_code", 0)))
            return outcome

    def _upgrade(
        self, environ: dict[str, Any], transport: Transport, key: str, agreement: deflate.Agreement | None
    ) -> Any:
        """The ``upgrade`` hook and the ``101``; a Session, a Response, or None (the client left)."""
        runtime = transport.runtime
        request = environ.get("werkzeug.request")
        if not isinstance(request, Request):
            request = Request(environ)
        try:
            decision = None
            if self.hooks.upgrade is not None:
                if runtime.hooks_threaded(self.options_for(runtime)):
                    decision = runtime.run_in_thread(self.hooks.upgrade, request)  # where it is, in a pool thread
                else:
                    decision = self.hooks.upgrade(request)
            if isinstance(decision, Response):
                return decision
            accepted = _Acceptance(decision, request, environ)
        except HTTPException as exc:
            return exc.get_response(environ)
        except Exception:
            log.exception("syncws: upgrade hook failed for %s", request.path)
            return _text_response(500, "Internal Server Error")

        if runtime.stopping:  # the stop began while the upgrade hook ran
            return _shutting_down(transport)
        if _in_pool_thread(runtime):
            # The socket belongs to the hub: the 101 is written and the session made and
            # started there, in one hand-off; its hooks keep the view's context variables
            # (Flask's contexts).
            context = contextvars.copy_context()
            args = (environ, transport, key, agreement, request, accepted, context)
            return runtime.run_in_hub(self._switch, *args, spawn=True)
        return self._switch(environ, transport, key, agreement, request, accepted)

    def _switch(
        self,
        environ: dict[str, Any],
        transport: Transport,
        key: str,
        agreement: deflate.Agreement | None,
        request: Request,
        accepted: _Acceptance,
        context: contextvars.Context | None = None,
    ) -> Session | None:
        """Write the ``101`` and make the session (hub thread); None when the client left.

        ``context``: the upgrade came from a view in a pool thread; the session
        gets those context variables for its hooks and starts here, detached.
        """
        runtime = transport.runtime
        try:
            headers = accepted.headers
            if agreement is not None:
                headers = [*headers, ("Sec-WebSocket-Extensions", agreement.header)]
            received = transport.accept(handshake.response_101(key, accepted.protocol, headers))
        except OSError:
            return None  # the client left during the handshake; nothing more to say
        # peer.request keeps the environ for the whole connection.  An upgrade
        # has no body (a request with one is refused), so the server's body
        # reader, which holds the socket's reader objects, is not needed.
        environ["wsgi.input"] = io.BytesIO()
        session = Session(
            runtime,
            transport.socket,
            received,
            self.hooks,
            request,
            accepted.namespace,
            accepted.context,
            accepted.protocol,
            transport.remote_address,
            self.options_for(runtime),
            agreement,
        )
        if context is not None:
            session.context = context
            if not transport.hand_over(session.run):  # the listener's pool serves it (or, without one,
                gevent.spawn(session.run)  # a greenlet of its own)
        return session

    def _negotiate_compression(self, environ: dict[str, Any], options: ServerOptions) -> deflate.Agreement | None:
        """permessage-deflate, when this handler or the server enables it and the client offers it."""
        if options.compression != "deflate":
            return None
        offered = environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS")
        if not offered:
            return None
        return deflate.negotiate(deflate.parse_extensions([offered]), options.compression_window_bits)

    def _no_transport(self, environ: dict[str, Any]) -> Response:
        global _warned_no_transport
        message = (
            "WebSocket upgrade needs the syncws server; this server cannot upgrade. "
            "Run the app with: python -m syncws module:app"
        )
        if not _warned_no_transport:
            _warned_no_transport = True
            log.error("syncws: %s (server: %s)", message, environ.get("SERVER_SOFTWARE", "unknown"))
        return _text_response(500, message)

    def __repr__(self) -> str:
        return f"<WebSocketHandler {self.hooks!r}>"


#: What a refusal at a connection cap says, by status (upgrades and event streams alike).
OVER_CAPACITY = {
    503: "Server at its connection limit; retry shortly",
    429: "Too many connections from your address",
}


def over_capacity(transport: Transport, status: int) -> Response:
    """503 at ``max_connections``, 429 at ``max_connections_per_ip``; never a 101."""
    transport.reusable = False
    return _text_response(status, OVER_CAPACITY[status], [("Retry-After", str(RETRY_AFTER)), ("Connection", "close")])


def _in_pool_thread(runtime: Any) -> bool:
    """True in a thread of the server's pool (a view there), not in its hub."""
    bridge = runtime.bridge
    return bridge is not None and not bridge.in_hub_thread()


#: What an upgrade or a new event stream is told while the server stops or drains (503, Retry-After).
SHUTTING_DOWN = "Server shutting down; retry shortly"


def _shutting_down(transport: Transport) -> Response:
    # Retry-After: the client should reconnect, to a restarted or another instance.
    transport.reusable = False
    return _text_response(
        503,
        SHUTTING_DOWN,
        [("Retry-After", str(RETRY_AFTER)), ("Connection", "close")],
    )


class _Acceptance:
    """The validated result of an ``upgrade`` hook that accepted."""

    def __init__(self, decision: Any, request: Request, environ: Mapping[str, Any]) -> None:
        if decision is None:
            decision = {}
        if not isinstance(decision, Mapping):
            raise TypeError(f"upgrade hook must return None, a dict or a Response, not {type(decision).__name__}")
        unknown = set(decision) - _UPGRADE_KEYS
        if unknown:
            raise TypeError(f"upgrade hook returned unknown key(s): {', '.join(sorted(map(str, unknown)))}")
        self.headers = handshake.normalize_headers(decision.get("headers"))
        namespace = decision.get("namespace")
        self.namespace = request.path if namespace is None else str(namespace)
        context = decision.get("context") or {}
        if not isinstance(context, Mapping):
            raise TypeError("upgrade hook 'context' must be a dict")
        self.context = dict(context)
        protocol = decision.get("protocol")
        if protocol is not None:
            offered = handshake.offered_protocols(environ)
            if protocol not in offered:
                raise ConfigurationError(f"upgrade hook chose protocol {protocol!r}, the client offered {offered}")
        self.protocol = protocol


def define_websocket_handler(hooks: Any = None, /, **kwargs: Any) -> WebSocketHandler:
    """Build a WebSocket handler from keyword hooks, a mapping, or an object/class.

    The result can be registered on a syncws ``App`` route, returned from a
    Flask view, or called as a WSGI app by any framework running on the
    syncws server.

    Besides hooks (``upgrade``, ``open``, ``message``, ``close``, ``error``),
    the keywords may be the per-handler options of the option table
    (``max_message_size``, ``compression``, ``ping_interval``,
    ``ping_timeout``, ``allowed_origins``, ``threads``,
    ``rate_limit``, ``rate_limit_bytes``, ``rate_limit_policy``): given, they replace the
    server's value for this handler's connections (``None`` disables the
    limit or check for this handler, as it does on the server).
    """
    unknown = sorted(k for k in kwargs if k not in HOOK_NAMES and k not in PER_HANDLER)
    if unknown:
        name = unknown[0]
        option = BY_NAME.get(name)
        if option is not None:
            raise TypeError(
                f"{name} is a server-wide option, not a per-handler one: set it on serve(..., {name}=...) or "
                f"Server(...), with {option.flag} on the command line, or with {option.env_var}; a handler may "
                f"override {', '.join(PER_HANDLER)}"
            )
        raise TypeError(
            f"unknown hook or option name(s): {', '.join(unknown)}{did_you_mean(name, (*HOOK_NAMES, *PER_HANDLER))}; "
            f"hooks: {', '.join(HOOK_NAMES)}; options: {', '.join(PER_HANDLER)}"
        )
    overrides = check_overrides({k: kwargs.pop(k) for k in list(kwargs) if k in PER_HANDLER})
    prepare_frameworks()
    return WebSocketHandler(Hooks(hooks, **kwargs), overrides)
