"""The ``text/event-stream`` wire format, as h3 writes it, without any I/O.

Data is split on every line ending the SSE parser recognises (CRLF, CR, LF),
one ``data:`` line per piece, and CR/LF are removed from ``id`` and
``event``: whatever a user pushes, it cannot inject a field or end an event
early.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..base.errors import ConfigurationError
from .payload import as_text

_LINE_BREAK = re.compile(r"\r\n|\r|\n")

HEADERS = [
    ("Content-Type", "text/event-stream"),
    ("Cache-Control", "private, no-cache, no-store, no-transform, must-revalidate, max-age=0"),
    # nginx buffers proxied responses by default; this header turns that off
    # for this response only, so events are not held back.
    ("X-Accel-Buffering", "no"),
]


@dataclass(kw_only=True)
class EventStreamMessage:
    """One event: ``data`` plus the optional ``id``, ``event`` and ``retry`` (ms).

    ``data`` that is not a str follows the WebSocket payload rules: dict/list
    become compact JSON, numbers and booleans their JSON text, None empty,
    bytes base64.
    """

    data: Any = ""
    id: str | None = None
    event: str | None = None
    retry: int | None = None


MessageLike = str | EventStreamMessage | Mapping[str, Any]


def _strip(value: object) -> str:
    return str(value).replace("\r", "").replace("\n", "")


def to_message(item: MessageLike) -> EventStreamMessage:
    if isinstance(item, EventStreamMessage):
        return item
    if isinstance(item, str):
        return EventStreamMessage(data=item)
    if isinstance(item, Mapping):
        unknown = set(item) - {"data", "id", "event", "retry"}
        if unknown:
            raise ConfigurationError(
                f"unknown event field(s): {', '.join(sorted(map(str, unknown)))}; a dict given to push() is one "
                "event's fields: data, id, event, retry.  To send a JSON object, make it the data: "
                'push({"data": {...}}) (dict and list data is sent as JSON)'
            )
        return EventStreamMessage(**item)
    raise TypeError(f"push() takes str, dict or EventStreamMessage (or a list of them), not {type(item).__name__}")


def format_event(item: MessageLike) -> str:
    if type(item) is str and "\n" not in item and "\r" not in item:
        return f"data: {item}\n\n"  # the common case, without building a message (5x faster)
    message = to_message(item)
    out = []
    if message.id is not None:
        out.append(f"id: {_strip(message.id)}\n")
    if message.event is not None:
        out.append(f"event: {_strip(message.event)}\n")
    retry = message.retry
    if isinstance(retry, int) and not isinstance(retry, bool):
        out.append(f"retry: {retry}\n")
    data = as_text(message.data)  # dict/list → JSON, bytes → base64, None → ""
    out.extend(f"data: {piece}\n" for piece in _LINE_BREAK.split(data))
    out.append("\n")
    return "".join(out)


def format_comment(text: str) -> str:
    """A comment, ``: line`` per line, then a blank line."""
    return "".join(f": {piece}\n" for piece in _LINE_BREAK.split(str(text))) + "\n"


def format_retry(retry: int) -> str:
    return f"retry: {int(retry)}\n\n"
