"""Turning what a view returns into a WSGI response.

Views may return what h3 handlers return: text (HTML), bytes, JSON-able
dicts/lists, a ready Response, or a WSGI callable such as a WebSocket handler.
"""

from __future__ import annotations

from typing import Any

from werkzeug.wrappers import Response

from .payload import to_json


def to_response(rv: Any) -> Any:
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
            f"a view returned {type(rv).__name__}; return str, bytes, dict, list, None, "
            "a Response or a WSGI callable"
        )
    if status is not None:
        response.status = status
    if headers:
        response.headers.extend(headers.items() if hasattr(headers, "items") else headers)
    return response
