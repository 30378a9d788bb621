"""A small h3-style application on werkzeug routing.

One path can carry HTTP views and a WebSocket handler at once: an upgrade
request goes to the handler, everything else to the views.  Rules are matched
with ``websocket=False`` so werkzeug never answers an upgrade to an HTTP route
with its ``WebsocketMismatch`` 400: that route simply answers the request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule

from ..base.errors import ConfigurationError
from ..protocol.handshake import is_upgrade_request
from ..server.handler import WebSocketHandler
from .responses import RoutedRequest, call_view

log = logging.getLogger("syncws")

View = Callable[..., Any]


class _Endpoint:
    __slots__ = ("views", "websocket")

    def __init__(self) -> None:
        self.views: dict[str, View] = {}
        self.websocket: WebSocketHandler | None = None


class App:
    """A WSGI application: ``app.get("/", view)``, ``app.get("/_ws", handler)``."""

    def __init__(self) -> None:
        self.url_map = Map(strict_slashes=True)
        self._endpoints: dict[str, _Endpoint] = {}
        # WebSocket handlers on paths without converters, by exact path: an
        # upgrade there skips werkzeug's routing (binding a MapAdapter and
        # matching cost about a tenth of a handshake); anything else, a
        # near-miss that werkzeug would redirect included, goes through it.
        self._static_websockets: dict[str, WebSocketHandler] = {}

    # -- registration -------------------------------------------------------------
    def route(self, path: str, handler: Any = None, *, methods: Sequence[str] = ("GET",)) -> Any:
        """Register ``handler`` (a view function or WebSocket handler) for ``path``.

        Without ``handler`` this is a decorator.
        """
        if handler is None:

            def decorator(view: View) -> View:
                self.route(path, view, methods=methods)
                return view

            return decorator
        if not callable(handler):
            raise TypeError(f"handler for {path!r} must be callable, not {type(handler).__name__}")
        methods = [m.upper() for m in methods]
        endpoint = self._endpoints.setdefault(path, _Endpoint())
        if isinstance(handler, WebSocketHandler):
            if methods != ["GET"]:
                raise ConfigurationError("a WebSocket handler can only be registered for GET")
            if endpoint.websocket is not None:
                raise ConfigurationError(f"{path!r} already has a WebSocket handler")
            endpoint.websocket = handler
        else:
            for method in methods:
                if method in endpoint.views:
                    raise ConfigurationError(f"{method} {path!r} is already registered")
                endpoint.views[method] = handler
        self._rebuild()
        return handler

    def _rebuild(self) -> None:
        # Registration is rare; rebuilding keeps one rule per path with the
        # union of its methods, so werkzeug's 404/405 answers stay right.
        rules = []
        for path, endpoint in self._endpoints.items():
            methods = set(endpoint.views) | ({"GET"} if endpoint.websocket else set())
            rules.append(Rule(path, endpoint=path, methods=sorted(methods)))
        self.url_map = Map(rules, strict_slashes=True)
        self._static_websockets = {
            path: endpoint.websocket
            for path, endpoint in self._endpoints.items()
            if endpoint.websocket is not None and "<" not in path
        }

    def get(self, path: str, handler: Any = None) -> Any:
        return self.route(path, handler, methods=("GET",))

    def post(self, path: str, handler: Any = None) -> Any:
        return self.route(path, handler, methods=("POST",))

    def put(self, path: str, handler: Any = None) -> Any:
        return self.route(path, handler, methods=("PUT",))

    def delete(self, path: str, handler: Any = None) -> Any:
        return self.route(path, handler, methods=("DELETE",))

    # -- WSGI -------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        static = self._static_websockets.get(environ.get("PATH_INFO") or "/")
        if static is not None and environ.get("REQUEST_METHOD") == "GET" and is_upgrade_request(environ):
            RoutedRequest(environ).view_args = {}  # what the match would have given
            return static.detached(environ, start_response)
        request = RoutedRequest(environ)
        adapter = self.url_map.bind_to_environ(environ)
        try:
            key, values = adapter.match(websocket=False)
        except HTTPException as exc:
            return exc(environ, start_response)
        request.view_args = dict(values)
        endpoint = self._endpoints[key]
        method = request.method
        websocket = endpoint.websocket
        if websocket is not None and method == "GET" and is_upgrade_request(environ):
            return websocket.detached(environ, start_response)  # nothing of ours around it to keep
        view = endpoint.views.get(method) or (endpoint.views.get("GET") if method == "HEAD" else None)
        if view is None:  # only a WebSocket handler here (werkzeug matched the method): it answers 426
            assert websocket is not None
            return websocket(environ, start_response)
        return call_view(view, request, values, environ, start_response)
