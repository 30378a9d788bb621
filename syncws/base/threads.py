"""OS threads and locks that stay real when the standard library is monkey-patched.

Pub/sub state is shared between the server's hub and plain OS threads (a
``publish`` from a worker thread, the Redis broker's threads).  gevent's
patched lock would switch greenlets instead of blocking the thread, and its
patched ``start_new_thread`` would start a greenlet, so both are taken from
before the patch.  :data:`RealLock` guards short sections only and is never
held across a greenlet switch.
"""

from __future__ import annotations

import _thread
import functools
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, NoReturn, ParamSpec, TypeAlias, TypeVar, TypeVarTuple

from gevent.monkey import get_original, is_module_patched

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
P = ParamSpec("P")

RealLock: Callable[[], _thread.LockType] = get_original("_thread", "allocate_lock")
_start_new_thread: Callable[..., int] = get_original("_thread", "start_new_thread")


def start_thread(target: Callable[[*Ts], object], *args: *Ts, off_hub: bool = False) -> int:
    """Run ``target(*args)`` in a new OS thread; return its identifier.

    Like ``threading.Thread``, the thread inherits the trace and profile
    hooks set with ``threading.settrace``/``setprofile``, so debuggers and
    coverage.py see the server's hub thread and the broker's threads too.
    ``off_hub``: a thread that must never run the hub's work (a pool
    worker, a broker thread), for :func:`hub_only`'s checks.
    """
    trace, profile = threading.gettrace(), threading.getprofile()

    def run() -> None:
        if trace is not None:
            sys.settrace(trace)
        if profile is not None:
            sys.setprofile(profile)
        _local.off_hub = off_hub
        target(*args)

    return _start_new_thread(run, ())


#: ``SYNCWS_DEBUG=1`` in the environment (read at import): :func:`hub_only` methods check their thread.
DEBUG = os.environ.get("SYNCWS_DEBUG", "") not in ("", "0")
#: What the checks found, "<method> called from <thread>" (the test suite fails a test that adds one).
hub_violations: list[str] = []
_local = threading.local()


def hub_only(method: Callable[P, T]) -> Callable[P, T]:
    """Mark ``method`` as one that must run in the server's hub thread.

    gevent objects belong to the hub of their thread, and the connection
    state has no locks: such a method called from the thread pool (a hook)
    or a broker thread corrupts state silently, or wakes nothing.  Without
    ``SYNCWS_DEBUG`` this returns ``method`` itself: no cost.  With it, a
    call from one of syncws's own OS threads (the pool's workers, the
    broker's threads) raises AssertionError and is recorded in
    :data:`hub_violations`.  An app's own thread is not one of them: it
    reaches these methods only through the hand-offs.
    """
    if not DEBUG:
        return method
    name = method.__qualname__

    @functools.wraps(method)
    def checked(*args: P.args, **kwargs: P.kwargs) -> T:
        if getattr(_local, "off_hub", False):
            violation = f"{name} called from {threading.current_thread().name}"
            hub_violations.append(violation)
            raise AssertionError("syncws: hub thread only: " + violation)
        return method(*args, **kwargs)

    return checked


def off_hub(fn: Callable[[], T]) -> T:
    """Run ``fn()`` in a thread of gevent's pool, marked as not the hub's for :func:`hub_only`."""
    _local.off_hub = True
    return fn()


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


@dataclass(frozen=True, slots=True)
class Returned(Generic[T]):
    """A call that returned ``value`` (in another thread or greenlet)."""

    value: T

    def unwrap(self) -> T:
        return self.value


@dataclass(frozen=True, slots=True)
class Raised:
    """A call that raised ``error``: re-raised where the caller waits, ``SystemExit`` too."""

    error: BaseException

    def unwrap(self) -> NoReturn:
        raise self.error


#: What a call handed to another thread or greenlet came to: the one box every hand-off uses.
Outcome: TypeAlias = Returned[T] | Raised


def capture(fn: Callable[[*Ts], T], *args: *Ts) -> Outcome[T]:
    """Run ``fn(*args)``; its value or its exception, to hand back to the caller."""
    try:
        return Returned(fn(*args))
    except BaseException as exc:  # SystemExit too: re-raised in the caller, not where it ran
        return Raised(exc)


class Reply(Generic[T]):
    """One answer awaited across threads: the caller blocks on a real lock (any thread).

    :meth:`set` is called once, from wherever the call ran; :meth:`wait`
    returns its value or raises its exception.
    """

    __slots__ = ("_done", "_outcome")

    def __init__(self) -> None:
        self._done = RealLock()
        self._done.acquire()
        self._outcome: Outcome[T] | None = None

    def set(self, outcome: Outcome[T]) -> None:
        self._outcome = outcome
        self._done.release()

    def run(self, fn: Callable[[*Ts], T], *args: *Ts) -> None:
        """Run ``fn(*args)`` here and set its outcome."""
        self.set(capture(fn, *args))

    def wait(self, timeout: float) -> T:
        """The value (or the exception) once set; TimeoutError after ``timeout`` seconds (-1: no limit)."""
        if not self._done.acquire(timeout=timeout):
            raise TimeoutError("no answer in time")
        assert self._outcome is not None
        return self._outcome.unwrap()


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

    def log(self, level: int, msg: str, *args: object, exc_info: bool = False) -> None:
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

    def info(self, msg: str, *args: object) -> None:
        self.log(logging.INFO, msg, *args)

    def warning(self, msg: str, *args: object) -> None:
        self.log(logging.WARNING, msg, *args)

    def exception(self, msg: str, *args: object) -> None:
        self.log(logging.ERROR, msg, *args, exc_info=True)
