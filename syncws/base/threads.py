"""OS threads and locks that stay real when the standard library is monkey-patched.

Pub/sub state is shared between the server's hub and plain OS threads (a
``publish`` from a worker thread, the Redis broker's threads).  gevent's
patched lock would switch greenlets instead of blocking the thread, and its
patched ``start_new_thread`` would start a greenlet, so both are taken from
before the patch.  :data:`RealLock` guards short sections only and is never
held across a greenlet switch.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
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


#: ``hand_off(fn)``: run ``fn()`` in the server's hub; False when there is no hub to run it.
HandOff = Callable[[Callable[[], None]], bool]


class ThreadLog:
    """A logger for OS threads that never takes one of logging's locks in them.

    In a monkey-patched process logging's locks are gevent locks, and an OS
    thread that waits for one can wait for ever (gevent issue 2013): a
    Redis read that logged its failure from gevent's thread pool hung there,
    and with it a subscriber's recovery.  So in such a process, once
    :attr:`hand_off` is set (by the server that owns the thread), a record is
    formatted in the thread and logged by the hub; otherwise, it is logged
    at once as usual.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.hand_off: HandOff | None = None

    def log(self, level: int, msg: str, *args: Any, exc_info: bool = False) -> None:
        hand_off = self.hand_off
        if hand_off is None or not is_module_patched("threading"):
            self.logger.log(level, msg, *args, exc_info=exc_info)
            return
        if not self.logger.isEnabledFor(level):
            return
        text = msg % args if args else msg
        if exc_info:
            text += "\n" + traceback.format_exc().rstrip()
        logger = self.logger
        if not hand_off(lambda: logger.log(level, "%s", text)):
            logger.log(level, "%s", text)  # no hub any more: the server stopped, and with it the contention

    def info(self, msg: str, *args: Any) -> None:
        self.log(logging.INFO, msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        self.log(logging.WARNING, msg, *args)

    def exception(self, msg: str, *args: Any) -> None:
        self.log(logging.ERROR, msg, *args, exc_info=True)
