"""Channels: a ready-made endpoint that clients drive over the ``syncws.v1`` protocol.

A layer on top of the hooks API, built only from it (a WebSocket handler,
peers, subscriptions with envelopes and recovery, presence, history and the
server's revoke commands): see ``docs/channels.md`` for how to use it and
``docs/protocol.md`` for the wire protocol.
"""

from .endpoint import Channels

__all__ = ["Channels"]
