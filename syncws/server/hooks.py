"""Hook sets: normalising the three ways a user can give hooks.

``define_websocket_handler`` accepts keyword functions, a mapping, or an
object/class with hook methods.  They all become one :class:`Hooks`
so the rest of the server never has to care which form was used.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

HOOK_NAMES = ("upgrade", "open", "message", "close", "error", "drain", "ping", "pong")


@dataclass(frozen=True)
class CloseDetails:
    """What the ``close`` hook receives.

    On a close the client started: its code and reason (both None when its
    close frame had no payload).  On a close the server started: what the
    server sent.  On a dropped connection: 1006 and "".
    """

    code: int | None
    reason: str | None


class Hooks:
    """The hooks of one handler; a hook not given is None."""

    __slots__ = HOOK_NAMES

    upgrade: Callable[..., Any] | None
    open: Callable[..., Any] | None
    message: Callable[..., Any] | None
    close: Callable[..., Any] | None
    error: Callable[..., Any] | None
    drain: Callable[..., Any] | None
    ping: Callable[..., Any] | None
    pong: Callable[..., Any] | None

    def __init__(self, source: object = None, **kwargs: Callable[..., Any]) -> None:
        found: dict[str, Callable[..., Any]] = {}
        if source is not None:
            if isinstance(source, Hooks):
                found.update({n: getattr(source, n) for n in HOOK_NAMES if getattr(source, n)})
            elif isinstance(source, Mapping):
                unknown = set(source) - set(HOOK_NAMES)
                if unknown:
                    raise TypeError(f"unknown hook name(s): {', '.join(sorted(map(str, unknown)))}")
                found.update(source)
            else:
                if inspect.isclass(source):
                    source = source()  # a class of hooks: its methods become bound hooks
                for name in HOOK_NAMES:
                    hook = getattr(source, name, None)
                    if hook is not None:
                        found[name] = hook
        unknown = set(kwargs) - set(HOOK_NAMES)
        if unknown:
            raise TypeError(f"unknown hook name(s): {', '.join(sorted(unknown))}; expected {', '.join(HOOK_NAMES)}")
        found.update({k: v for k, v in kwargs.items() if v is not None})
        for name in HOOK_NAMES:
            hook = found.get(name)
            if hook is not None and not callable(hook):
                raise TypeError(f"hook {name!r} must be callable, got {type(hook).__name__}")
            setattr(self, name, hook)

    def __repr__(self) -> str:
        present = [n for n in HOOK_NAMES if getattr(self, n) is not None]
        return f"<Hooks {', '.join(present) or 'none'}>"
