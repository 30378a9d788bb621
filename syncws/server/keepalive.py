"""Keepalive: one ticker per server pings silent peers and drops dead ones.

Design choice: a single hub-wide greenlet scans the server's sessions every
*tick* instead of one timer (or greenlet) per session.  A scan is a few
attribute reads per session, so even tens of thousands of peers cost
milliseconds once per tick, and an idle server with keepalive disabled runs no
greenlet at all (the ticker starts with the first session that needs it).  The
price is precision: a ping goes out between ``ping_interval`` and
``ping_interval + tick`` seconds of silence, a dead peer is dropped between
``ping_timeout`` and ``ping_timeout + tick`` seconds after the ping.  The tick
is a quarter of the smallest ``ping_interval``/``ping_timeout`` in use, kept
between :data:`MIN_TICK` and :data:`MAX_TICK` (one second with the defaults).

What counts as an answer is *any* byte from the peer after the ping, not only
the matching pong: a peer that is busy sending is obviously alive.  See
:meth:`syncws.protocol.connection.Connection.keepalive` for the per-connection rules.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from typing import Any

import gevent
from gevent.event import Event

from ..base.threads import hub_only

log = logging.getLogger("syncws")

MIN_TICK = 0.05
MAX_TICK = 1.0


class Keepalive:
    """The server's ticker (hub thread only)."""

    def __init__(self, sessions: Collection[Any]) -> None:
        self.sessions = sessions  # the live set of sessions: each has keepalive(now)
        self.tick = MAX_TICK
        self._wake = Event()
        self._greenlet: gevent.Greenlet[..., Any] | None = None

    @hub_only
    def watch(self, ping_interval: float | None, ping_timeout: float | None) -> None:
        """A session with these settings started; make sure the ticker serves it."""
        if ping_interval is None:
            return
        shortest = ping_interval if ping_timeout is None else min(ping_interval, ping_timeout)
        wanted = min(MAX_TICK, max(MIN_TICK, shortest / 4))
        if wanted < self.tick:
            self.tick = wanted
            self._wake.set()  # re-arm the current wait with the shorter tick
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            self._wake.clear()
            self._wake.wait(self.tick)
            self._scan(time.monotonic())

    @hub_only
    def _scan(self, now: float) -> None:
        # A function of its own, so that no local keeps the last session alive
        # between ticks (a closed peer must be garbage as soon as it is gone).
        for session in list(self.sessions):
            try:
                session.keepalive(now)
            except Exception:  # one broken session must not stop the others' keepalive
                log.exception("syncws: keepalive failed for %r", session)
            session = None  # do not keep the last one scanned alive while we sleep

    @hub_only
    def stop(self) -> None:
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            greenlet.kill(block=False)

    def __repr__(self) -> str:
        state = "running" if self._greenlet is not None else "idle"
        return f"<Keepalive tick={self.tick:g}s {state}>"
