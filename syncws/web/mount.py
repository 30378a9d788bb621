"""``mount(app, routes)``: WebSocket handlers and event streams in front of any WSGI app.

::

    application = syncws.mount(get_wsgi_application(), {
        "/_ws": chat,                  # a WebSocket handler
        "/events": events,             # a view: events(request) -> EventStream
        "/rooms/<room>": room_socket,  # werkzeug-style rules work too
    })

A route's target is either

* a :class:`~syncws.websocket.WebSocketHandler`: every request for the path
  goes to it, so an upgrade request is upgraded (or refused by its ``upgrade``
  hook) and a plain GET gets its 426; or
* a view, ``view(request, **values)`` with a werkzeug request and the rule's
  values, returning anything :func:`syncws.responses.to_response` accepts: an
  event stream, str, bytes, a dict or list (JSON), a Response, a WSGI callable.
  The view answers every method; look at ``request.method`` to refuse some.

Paths are matched exactly (``strict_slashes``: "/_ws/" is not "/_ws") with
``websocket=False``, the way :class:`syncws.App` matches.  A request for any
other path -- an upgrade request included -- goes to the wrapped app with its
environ untouched: the mount builds no request object for it and adds nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule

from ..base.errors import ConfigurationError
from ..server.handler import WebSocketHandler
from .responses import RoutedRequest, call_view

log = logging.getLogger("syncws")

__all__ = ["Mount", "mount"]


class Mount:
    """The WSGI application :func:`mount` returns."""

    def __init__(self, app: Callable[..., Any], routes: Mapping[str, Any]) -> None:
        if not callable(app):
            raise TypeError(f"mount() needs a WSGI application, not {type(app).__name__}")
        if not isinstance(routes, Mapping):
            raise TypeError("mount() routes must be a mapping of path -> handler or view")
        rules = []
        self.targets: dict[str, Any] = {}
        for path, target in routes.items():
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigurationError(f"a mounted path must be a string starting with '/', got {path!r}")
            if not callable(target):
                raise TypeError(f"the target for {path!r} must be callable, not {type(target).__name__}")
            self.targets[path] = target
            rules.append(Rule(path, endpoint=path))  # no methods: the target answers every method
        self.app = app
        self.url_map = Map(rules, strict_slashes=True)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            key, values = self.url_map.bind_to_environ(environ).match(websocket=False)
        except HTTPException:  # NotFound, or a slash redirect: not ours
            passed: Iterable[bytes] = self.app(environ, start_response)
            return passed
        target = self.targets[key]
        if isinstance(target, WebSocketHandler):
            return target.detached(environ, start_response)  # straight from the server: nothing to keep
        return call_view(target, RoutedRequest(environ), values, environ, start_response)

    def __repr__(self) -> str:
        return f"<syncws.mount {sorted(self.targets)} in front of {self.app!r}>"


def mount(app: Callable[..., Any], routes: Mapping[str, Any]) -> Mount:
    """Serve ``routes`` (path -> WebSocket handler or view) in front of ``app``; pass the rest through."""
    return Mount(app, routes)
