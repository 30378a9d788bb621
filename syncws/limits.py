"""Validation of the limit options, and the Origin check.

Shared by :class:`~syncws.server.ServerOptions` (server-wide defaults) and
``define_websocket_handler`` (per-handler overrides), which cannot import each
other.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, FrozenSet, Optional, Union

log = logging.getLogger("syncws")

#: What ``allowed_origins`` becomes once normalised: None (no check), a
#: callable(origin) -> bool, or a frozenset of lower-cased origins ("*": any).
OriginPolicy = Union[None, Callable[[str], Any], FrozenSet[str]]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_positive_int(name: str, value: Any, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int{' or None' if optional else ''}, not {value!r}")


def check_seconds(name: str, value: Any, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    # ``not 0 < value < inf`` also refuses NaN, which would never expire.
    if not _is_number(value) or not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a positive number of seconds{' or None' if optional else ''}, not {value!r}")


def normalize_origins(value: Any) -> OriginPolicy:
    """None, a callable, or a frozenset of lower-cased origins ("*" allows any)."""
    if value is None or callable(value):
        return value
    if isinstance(value, str):
        value = [value]
    try:
        items = list(value)
    except TypeError:
        raise ValueError(
            f"allowed_origins must be None, a list of origins or a callable, not {type(value).__name__}"
        ) from None
    origins = set()
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"allowed_origins entries must be non-empty strings, not {item!r}")
        origins.add(item.strip().rstrip("/").lower())
    return frozenset(origins)


def origin_allowed(policy: OriginPolicy, origin: Optional[str]) -> bool:
    """Whether a WebSocket upgrade with this ``Origin`` header may proceed.

    No policy, or no ``Origin`` header at all, passes: browsers always send
    one on a WebSocket handshake, so a request without it comes from a
    non-browser client (a script, a server, a CLI tool) that could forge any
    Origin anyway; the check exists to stop *other web sites* from opening
    sockets with a visitor's cookies (cross-site WebSocket hijacking).
    A list matches the serialised origin (``scheme://host[:port]``) exactly,
    case-insensitively; ``"*"`` matches anything.  A callable that raises
    rejects (fail closed) and the exception is logged.
    """
    if policy is None or origin is None:
        return True
    if callable(policy):
        try:
            return bool(policy(origin))
        except Exception:
            log.exception("syncws: allowed_origins callable raised for Origin %r; rejecting", origin)
            return False
    return "*" in policy or origin.strip().rstrip("/").lower() in policy
