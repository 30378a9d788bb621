"""Turning what a view returns into a WSGI response.

Views may return what h3 handlers return: text (HTML), bytes, JSON-able
dicts/lists, a ready Response, or a WSGI callable such as a WebSocket handler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.wrappers import Request, Response

from ..protocol.payload import to_json

log = logging.getLogger("syncws")


def to_response(rv: object) -> Any:
    """Return a WSGI application that answers with ``rv``."""
    if isinstance(rv, Response):
        return rv
    status = None
    headers = None
    if isinstance(rv, tuple):
        if not 2 <= len(rv) <= 3:
            raise TypeError("a view's tuple must be (body, status) or (body, status, headers)")
        rv, status, *rest = rv
        headers = rest[0] if rest else None
    if isinstance(rv, str):
        response = Response(rv, mimetype="text/html")
    elif isinstance(rv, (bytes, bytearray, memoryview)):
        response = Response(bytes(rv), mimetype="application/octet-stream")
    elif isinstance(rv, (dict, list)):
        response = Response(to_json(rv), mimetype="application/json")
    elif rv is None:
        response = Response(status=204)
    elif isinstance(rv, Response):
        response = rv
    elif callable(rv):  # a WebSocket handler, an event stream, any WSGI app
        if status is not None or headers is not None:
            raise TypeError("a WSGI callable returned by a view cannot carry a status or headers")
        return rv
    else:
        raise TypeError(
            f"a view returned {type(rv).__name__}; return str, bytes, dict, list, None, a Response or a WSGI callable"
        )
    if status is not None:
        response.status = status
    if headers:
        response.headers.extend(headers.items() if hasattr(headers, "items") else headers)
    return response


class RoutedRequest(Request):
    """A request with the values its route matched, as Flask's request has them (the upgrade hook reads them too).

    Made by the router before the view or the handler sees the request; it
    is also ``environ["werkzeug.request"]``, so a handler further down gets
    this same object.
    """

    view_args: dict[str, Any] | None = None


def call_view(
    view: Callable[..., Any],
    request: RoutedRequest,
    values: Mapping[str, Any],
    environ: dict[str, Any],
    start_response: Any,
) -> Iterable[bytes]:
    """Run a view and answer with what it returned (App routes and mount() alike).

    An ``HTTPException`` the view raises is its answer; any other exception
    is logged and answered 500, never a traceback to the client.
    """
    request.view_args = dict(values)
    try:
        response = to_response(view(request, **values))
    except HTTPException as exc:
        response = exc.get_response(environ)
    except Exception:
        log.exception("syncws: view for %s %s failed", request.method, request.path)
        response = InternalServerError()
    result: Iterable[bytes] = response(environ, start_response)
    return result
