"""What a running server still holds: its hub's live greenlets, its connections' objects."""

from __future__ import annotations

import gc

import gevent

from syncws.server.outbox import Outbox
from syncws.server.peer import Peer
from syncws.server.session import Session


def live_greenlets(server) -> list:
    """gevent greenlets of the server's hub that are not dead (started or pending).

    ``gc.get_objects()`` also returns dead weak proxies (coverage.py's gevent
    tracer keeps some) and greenlets of hubs that are gone, whose ``parent``
    is a dead proxy: touching those raises ReferenceError; none is this
    server's.
    """
    hub = server.runtime.bridge.hub
    found = []
    for obj in gc.get_objects():
        try:
            if isinstance(obj, gevent.Greenlet) and obj.parent is hub and not obj.dead:
                found.append(obj)
        except ReferenceError:
            continue
    return found


def survivors(server) -> list:
    """This server's sessions, peers and outboxes still in memory (other tests' objects do not count)."""
    gc.collect()
    found: list[object] = []
    for obj in gc.get_objects():
        try:
            if isinstance(obj, Session) and obj.runtime is server.runtime:
                found.append(obj)
            elif isinstance(obj, Peer) and obj.server is server:
                found.append(obj)
            elif isinstance(obj, Outbox) and obj._flusher is server.runtime.flusher:
                found.append(obj)
        except ReferenceError:  # a dead weak proxy (see live_greenlets)
            continue
    return found
