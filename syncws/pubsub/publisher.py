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

from ..protocol.payload import Outgoing
from . import redis_scripts
from .broker import new_origin
from .redis_broker import require_redis
from .registry import check_topic

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

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
