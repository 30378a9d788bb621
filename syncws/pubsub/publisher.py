"""A write-only publisher for processes that run no server.

Cron jobs, Celery tasks and scripts publish to the same Redis channels the
servers listen on, in plain synchronous code: no gevent, no hub, no threads.
"""

from __future__ import annotations

from typing import Any

from ..base.errors import ConfigurationError
from ..protocol.payload import Outgoing
from .broker import channel_name, encode_envelope, new_origin
from .redis_broker import require_redis


class Publisher:
    """``Publisher("redis://localhost:6379/0").publish("news", {"title": "..."})``."""

    def __init__(self, url: str, *, prefix: str = "syncws", **redis_options: Any) -> None:
        redis_options.setdefault("socket_connect_timeout", 5)
        redis_options.setdefault("socket_timeout", 5)
        self._client = require_redis().Redis.from_url(url, **redis_options)
        self.prefix = prefix
        self.origin = new_origin()

    def publish(self, topic: str, data: Any, *, namespace: str | None = None) -> int:
        """Send ``data`` to every subscriber of ``topic`` on every server process.

        ``namespace`` None reaches every namespace.  Returns how many server
        processes had interest (Redis' receiver count); raises redis-py's
        errors when Redis cannot be reached, so a job can retry or fail.
        """
        if not isinstance(topic, str) or not topic:
            raise ConfigurationError("a topic is a non-empty string")
        outgoing = Outgoing(data)
        channel = channel_name(self.prefix, namespace, topic)
        return int(self._client.publish(channel, encode_envelope(self.origin, namespace, topic, outgoing)))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
