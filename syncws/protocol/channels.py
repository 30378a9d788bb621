"""The channels wire protocol (``syncws.v1``), without I/O.

What the server's :class:`~syncws.channels.Channels` endpoint and the
clients (:mod:`syncws.client`, the browser's ``syncws.js``) agree on:
message types, error codes, close codes and which of those a client
reconnects after, and the reconnect back-off.  Both ends use these names;
``docs/protocol.md`` is their prose form.

Every message is a JSON object in a text frame.  A client request has a
``type`` and, when it wants an answer, an ``id``; the answer repeats the id
with ``result`` or ``error``.  A publication the server pushes has ``topic``,
``offset`` and ``data`` and no ``type`` (it is the core's subscription
envelope, built once per publish for every recipient); every other push has a
``type``.
"""

from __future__ import annotations

import enum
import json
from typing import Any, NamedTuple

#: The subprotocol both ends name in the handshake.
SUBPROTOCOL = "syncws.v1"

#: The longest request id the server accepts (a string or an integer).
MAX_ID_LENGTH = 64


class Request(enum.StrEnum):
    """What a client sends (the ``type`` field)."""

    CONNECT = "connect"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    PUBLISH = "publish"
    PRESENCE = "presence"
    HISTORY = "history"
    RPC = "rpc"
    REFRESH = "refresh"
    MESSAGE = "message"
    PONG = "pong"


class Push(enum.StrEnum):
    """What the server sends unasked (the ``type`` field); publications have none."""

    PING = "ping"
    JOIN = "join"
    LEAVE = "leave"
    REFRESH = "refresh"
    UNSUBSCRIBED = "unsubscribed"
    MESSAGE = "message"


class Action(enum.StrEnum):
    """What ``authorize(peer, action, topic)`` is asked about."""

    SUBSCRIBE = "subscribe"
    PUBLISH = "publish"
    PRESENCE = "presence"
    HISTORY = "history"


class ErrorCode(enum.StrEnum):
    """The ``code`` of an error reply: the request failed, the connection stays."""

    BAD_REQUEST = "bad_request"  # malformed: not JSON, a field of the wrong type, an unknown type
    FORBIDDEN = "forbidden"  # authorize said no
    NOT_FOUND = "not_found"  # no such RPC method
    LIMIT = "limit"  # a per-connection bound (subscriptions, pending RPCs)
    INTERNAL = "internal"  # the application failed; details are in the server's log only
    UNAVAILABLE = "unavailable"  # history or presence could not be read (the broker is away)


class Close(enum.IntEnum):
    """The close codes of the protocol (besides RFC 6455's own)."""

    PROTOCOL_ERROR = 4000  # no connect first, a second connect, no subprotocol: a bug in the client
    UNAUTHORIZED = 4001  # connect (or refresh) refused the token
    EXPIRED = 4002  # the credentials expired and no refresh came in time
    DISCONNECTED = 4003  # the application disconnected this user (server.disconnect)


#: After these a client must not reconnect: the same attempt would fail again.
FINAL_CLOSE_CODES = frozenset(
    {
        1000,  # the client (or the app, deliberately) closed
        1002,  # RFC 6455 protocol error
        1003,  # unsupported data
        1007,  # invalid UTF-8
        1009,  # a message over max_message_size
        1010,  # a mandatory extension
        Close.PROTOCOL_ERROR,
        Close.UNAUTHORIZED,
        Close.DISCONNECTED,
    }
)


def should_reconnect(code: int | None, can_refresh: bool) -> bool:
    """Whether a client reconnects (with back-off) after a close with ``code``.

    ``None``: no close frame (the connection dropped, 1006).  ``EXPIRED`` is
    worth a new attempt only for a client that can get a fresh token
    (``get_token``).  Codes 4004-4999 are the application's: final, since the
    protocol cannot know what they mean.
    """
    if code is None:
        return True
    if code == Close.EXPIRED:
        return can_refresh
    if code in FINAL_CLOSE_CODES or 4000 <= code <= 4999:
        return False
    return True


def backoff_delay(attempt: int, base: float, cap: float, random: float) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0 first): capped exponential, full jitter.

    ``random`` is a uniform draw from [0, 1), passed in so the rule is
    testable.  Full jitter (a uniform wait up to the exponential bound)
    spreads a crowd of clients that lost the same server, instead of bringing
    them back in waves.
    """
    bound = min(cap, base * 2.0 ** min(attempt, 32))
    return bound * random


class Incoming(NamedTuple):
    """A client request, checked for shape: ``type``, ``id`` (None when absent) and the whole object."""

    type: Request
    id: str | int | None
    body: dict[str, Any]


class BadRequest(ValueError):
    """A request that cannot be understood; ``id`` is its id when one could be read."""

    def __init__(self, message: str, request_id: str | int | None = None) -> None:
        super().__init__(message)
        self.id = request_id


def parse_request(text: str) -> Incoming:
    """Check a client's text frame; :class:`BadRequest` says what is wrong with it."""
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):  # (nested past the interpreter's depth: not a request either)
        raise BadRequest("not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("a request is a JSON object")
    request_id = body.get("id")
    if request_id is not None and not _valid_id(request_id):
        raise BadRequest(f"id must be a string or an integer of at most {MAX_ID_LENGTH} characters")
    kind = body.get("type")
    try:
        request_type = Request(kind) if isinstance(kind, str) else None
    except ValueError:
        request_type = None
    if request_type is None:
        raise BadRequest(f"unknown type {_short(kind)}", request_id)
    return Incoming(request_type, request_id, body)


def _valid_id(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return len(str(value)) <= MAX_ID_LENGTH
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def field(request: Incoming, name: str, kind: type | tuple[type, ...], default: object = None) -> Any:
    """A request's field, checked: :class:`BadRequest` when it is there with another type.

    ``bool`` is never taken for ``int`` (JSON's ``true`` is not a number).
    """
    value = request.body.get(name, default)
    if value is default:
        return value
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        names = " or ".join(k.__name__ for k in _as_tuple(kind))
        raise BadRequest(f"{name} must be {names}", request.id)
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def reply(request_id: str | int | None, result: object) -> dict[str, Any]:
    return {"id": request_id, "result": result}


def error(request_id: str | int | None, code: ErrorCode, message: str) -> dict[str, Any]:
    return {"id": request_id, "error": {"code": str(code), "message": message}}
