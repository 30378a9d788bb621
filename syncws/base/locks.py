"""A lock that stays an OS lock when the standard library is monkey-patched.

Pub/sub state is shared between the server's hub and plain OS threads (a
``publish`` from a worker thread, the Redis subscriber thread).  gevent's
patched lock would switch greenlets instead of blocking the thread, so the
real one is taken from before the patch.  It guards short sections only and is
never held across a greenlet switch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gevent.monkey import get_original

RealLock: Callable[[], Any] = get_original("_thread", "allocate_lock")
