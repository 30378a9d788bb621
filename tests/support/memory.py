"""What a running server still holds: its hub's live greenlets."""

from __future__ import annotations

import gc

import gevent


def live_greenlets(server) -> list:
    """gevent greenlets of the server's hub that are not dead (started or pending).

    ``gc.get_objects()`` also returns greenlets of hubs that are gone, whose
    ``parent`` is a dead weak proxy: those are not this server's.
    """
    hub = server.runtime.bridge.hub
    found = []
    for obj in gc.get_objects():
        if not isinstance(obj, gevent.Greenlet):
            continue
        try:
            if obj.parent is hub and not obj.dead:
                found.append(obj)
        except ReferenceError:
            continue
    return found
