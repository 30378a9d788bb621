"""A write-only publisher for processes that run no server.

Cron jobs, Celery tasks and scripts publish to the same Redis channels the
servers listen on, in plain synchronous code: no gevent, no hub, no threads.
When the servers keep a history (``history_size``), a publisher's publishes
are stored in it too, with the settings of the servers alive now (read from
Redis by the same script that stores and publishes): settings that a server
which stopped more than ``presence_ttl`` ago left behind are not used.
"""

from __future__ import annotations

import logging
from typing import Any

from ..protocol.connection import check_close
from ..protocol.payload import Outgoing
from . import redis_scripts
from .broker import command_channel, encode_command, new_origin
from .redis_broker import require_redis
from .registry import check_topic, check_user

log = logging.getLogger("syncws.broker")


class Publisher:
    """``Publisher("redis://localhost:6379/0").publish("news", {"title": "..."})``."""

    def __init__(self, url: str, *, prefix: str = "syncws", **redis_options: Any) -> None:
        redis_options.setdefault("socket_connect_timeout", 5)
        redis_options.setdefault("socket_timeout", 5)
        self._client = require_redis().Redis.from_url(url, **redis_options)
        self.prefix = prefix
        self.origin = new_origin()
        self._script = self._client.register_script(redis_scripts.PUBLISH)
        self._warned = False

    def publish(self, topic: str, data: Any, *, namespace: str | None = None) -> int:
        """Send ``data`` to every subscriber of ``topic`` on every server process.

        ``namespace`` None reaches every namespace (and, with history on, is
        stored in the history of every namespace that has one or a subscriber
        of the topic).  Returns how many server processes received it (Redis'
        receiver count, summed over namespaces); raises redis-py's errors when
        Redis cannot be reached, so a job can retry or fail.
        """
        check_topic(topic)
        args = redis_scripts.publish_args(self.prefix, self.origin, namespace, topic, Outgoing(data))
        received, disagree = self._script(args=args)
        if disagree and not self._warned:
            self._warned = True
            log.warning(
                "syncws: the servers under Redis prefix %r disagree on history settings; this publish was stored "
                "with the largest history_size (their logs say which servers differ)",
                self.prefix,
            )
        return int(received)

    def disconnect(self, user: str | int, reason: str = "", code: int = 4003) -> int:
        """Close every connection of ``user`` on every server process (``Peer.identify`` names users).

        For a job that bans a user; the same as ``server.disconnect`` in a
        server.  Returns how many server processes received it.
        """
        check_close(code, reason)
        return self._command("disconnect", check_user(user), reason=reason, code=code)

    def unsubscribe(self, user: str | int, topic: str, *, namespace: str | None = None) -> int:
        """Remove ``user``'s subscriptions to ``topic`` (in ``namespace``, or every one) on every process."""
        check_topic(topic)
        return self._command("unsubscribe", check_user(user), topic=topic, namespace=namespace)

    def _command(self, op: str, user: str, **fields: Any) -> int:
        data = encode_command(self.origin, op, user=user, **fields)
        return int(self._client.publish(command_channel(self.prefix), data))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
