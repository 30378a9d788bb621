"""A write-only publisher for processes that run no server.

Cron jobs, Celery tasks and scripts publish to the same Redis channels the
servers listen on, in plain synchronous code: no gevent, no hub, no threads.
When the servers keep a history (``history_size``), a publisher's publishes
are stored in it too, with the settings of the servers alive now (read from
Redis, at most every ``settings_ttl`` seconds, and passed to the script that
stores and publishes): settings that a server which stopped more than
``presence_ttl`` ago left behind are not used.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..protocol.connection import check_close
from ..protocol.payload import Outgoing
from . import redis_scripts
from .broker import channel_name, command_channel, encode_command, encode_envelope, new_origin
from .redis_target import RedisTarget, parse_broker_url, require_redis
from .registry import check_topic, check_user

log = logging.getLogger("syncws.broker")


class Publisher:
    """``Publisher("redis://localhost:6379/0").publish("news", {"title": "..."})``.

    Any broker URL a server takes (Sentinel, Cluster, TLS, ACL users: see
    :mod:`syncws.pubsub.redis_target`); ``redis_options`` go to redis-py.
    The live servers' history settings are read at most every
    ``settings_ttl`` seconds (one more round trip then): a server that
    started with history less than that ago may see a publish without it.
    """

    def __init__(self, url: str, *, prefix: str = "syncws", settings_ttl: float = 1.0, **redis_options: Any) -> None:
        redis_options.setdefault("socket_connect_timeout", 5)
        redis_options.setdefault("socket_timeout", 5)
        self.target: RedisTarget = parse_broker_url(url, **redis_options)
        self.prefix = redis_scripts.check_prefix(prefix)
        self._client = self.target.client()
        self.origin = new_origin()
        self.settings_ttl = settings_ttl
        self._script = self._client.register_script(redis_scripts.PUBLISH)
        self._fleet = self._client.register_script(redis_scripts.ANNOUNCE)
        self._settings: tuple[float, int, int, bool] = (0.0, 0, 0, False)  # until, size, ttl ms, mixed
        self._spaces: dict[str, list[str]] = {}  # topic -> its namespaces, as last seen in Redis
        self._sharded: bool | None = None
        self._warned = False

    def publish(self, topic: str, data: object, *, namespace: str | None = None) -> int:
        """Send ``data`` to every subscriber of ``topic`` on every server process.

        ``namespace`` None reaches every namespace (and, with history on, is
        stored in the history of every namespace that has one or a subscriber
        of the topic).  Returns how many subscriber connections received it
        (Redis' receiver count: server processes, summed over namespaces);
        raises redis-py's errors when Redis cannot be reached, so a job can
        retry or fail.
        """
        check_topic(topic)
        outgoing = Outgoing(data)
        size, ttl_ms, mixed = self._live_settings()
        if size <= 0:  # no live server keeps a history
            envelope = encode_envelope(self.origin, namespace, topic, outgoing)
            return self._publish(channel_name(self.prefix, namespace, topic), envelope)
        for _ in range(5):
            spaces = self._spaces.get(topic, [])
            keys, args = redis_scripts.publish_call(
                self.prefix, self.origin, namespace, spaces, topic, outgoing, None, size, ttl_ms, mixed, self._shards()
            )
            result = self._script(keys=keys, args=args)
            if result[0] != -1:
                return int(result[0])
            self._spaces[topic] = sorted(ns.decode() if isinstance(ns, bytes) else ns for ns in result[1])
        raise require_redis().RedisError("the namespaces of the topic kept changing; publish again")

    def _live_settings(self) -> tuple[int, int, bool]:
        """The largest ``history_size`` and the longest ``history_ttl`` of the live servers, and whether some keep none."""
        until, size, ttl, mixed = self._settings
        if time.monotonic() < until:
            return size, ttl, mixed
        values = self._fleet(keys=redis_scripts.fleet_keys(self.prefix), args=["", 0, 0, 0])
        size, ttl, with_history, without, seen = 0, -1, 0, 0, set()
        for raw in values:
            value = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
            seen.add(value)
            this_size, _, this_ttl = value.partition(" ")
            s, t = int(this_size or 0), int(this_ttl or 0)
            if s > 0:
                with_history += 1
                size = max(size, s)
                if ttl != 0 and (t == 0 or t > ttl):
                    ttl = t
            else:
                without += 1
        if len(seen) > 1 and not self._warned:
            self._warned = True
            log.warning(
                "syncws: the servers under Redis prefix %r disagree on history settings; this publish was stored "
                "with the largest history_size (their logs say which servers differ)",
                self.prefix,
            )
        mixed = with_history > 0 and without > 0
        self._settings = (time.monotonic() + self.settings_ttl, size, max(ttl, 0), mixed)
        return size, max(ttl, 0), mixed

    def _shards(self) -> bool:
        if self._sharded is None:
            self._sharded = self.target.sharded(self._client)
        return self._sharded

    def _publish(self, channel: str, data: bytes) -> int:
        if self._shards():
            return int(self._client.spublish(channel, data))
        return int(self._client.publish(channel, data))

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
        return self._publish(command_channel(self.prefix), encode_command(self.origin, op, user=user, **fields))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
