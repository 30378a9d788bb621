"""OS threads and locks that stay real when the standard library is monkey-patched.

Pub/sub state is shared between the server's hub and plain OS threads (a
``publish`` from a worker thread, the Redis broker's threads).  gevent's
patched lock would switch greenlets instead of blocking the thread, and its
patched ``start_new_thread`` would start a greenlet, so both are taken from
before the patch.  :data:`RealLock` guards short sections only and is never
held across a greenlet switch.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from gevent.monkey import get_original, is_module_patched

RealLock: Callable[[], Any] = get_original("_thread", "allocate_lock")
_start_new_thread: Callable[..., int] = get_original("_thread", "start_new_thread")


def start_thread(target: Callable[..., Any], *args: Any) -> int:
    """Run ``target(*args)`` in a new OS thread; return its identifier.

    Like ``threading.Thread``, the thread inherits the trace and profile
    hooks set with ``threading.settrace``/``setprofile``, so debuggers and
    coverage.py see the server's hub thread and the broker's threads too.
    """
    trace, profile = threading.gettrace(), threading.getprofile()

    def run() -> None:
        if trace is not None:
            sys.settrace(trace)
        if profile is not None:
            sys.setprofile(profile)
        target(*args)

    return _start_new_thread(run, ())


def monkey_patched() -> bool:
    """Whether blocking calls of the standard library yield to gevent in this process.

    True when ``socket`` and ``time`` are patched (``python -m syncws`` and
    ``gevent.monkey.patch_all()`` patch both): a view that sleeps or does
    network I/O then blocks only its own greenlet.
    """
    return bool(is_module_patched("socket") and is_module_patched("time"))


def use_threads(mode: str) -> bool:
    """The ``threads`` option's answer for this process: "on", "off", or "auto" (on unless monkey-patched)."""
    return mode == "on" or (mode == "auto" and not monkey_patched())
