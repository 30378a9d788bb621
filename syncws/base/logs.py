"""One JSON object per log line, for log pipelines (``--log-format json``).

:class:`JsonFormatter` is a plain :class:`logging.Formatter`: syncws logs
through the standard ``logging`` module (loggers ``syncws``,
``syncws.access`` and ``syncws.error``), so an app routes these lines like its
own, and can put this formatter on any handler.  A line has ``time`` (UTC,
ISO 8601), ``level``, ``logger`` and ``message``, the exception when there is
one, and the fields syncws attaches to connection and request lines
(:data:`FIELDS`): a field that does not apply is left out, never ``null``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

#: The structured fields of syncws's log lines (``extra=`` of the logging call), in output order.
FIELDS = (
    "connection",  # the WebSocket peer's id, or the event stream's
    "kind",  # "websocket" or "sse"
    "user",  # the user a peer identified as (channels: the token's user)
    "method",
    "path",
    "status",  # the HTTP status of a request (101 for an upgrade)
    "remote",  # the client's address (after trusted_proxies)
    "code",  # a WebSocket close code
    "reason",  # and its reason
    "duration",  # seconds: the request's, or the connection's whole life
    "bytes",  # bytes written for the response, its head included (as gevent counts them)
)


class JsonFormatter(logging.Formatter):
    """Format a record as one line of JSON (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        for name in FIELDS:
            value = fields.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


def _utc(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def make_handler(log_format: str, stream: Any) -> logging.Handler:
    """A stream handler in ``log_format`` (``"text"``: the message alone, as syncws always printed)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter("%(message)s"))
    return handler
