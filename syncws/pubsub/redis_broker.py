"""Redis pub/sub as the broker between syncws processes.

All Redis I/O happens in two real OS threads of this broker, never in the
server's hub, so a slow or unreachable Redis cannot stall WebSocket traffic:

* the relay thread owns one connection and PUBLISHes local publishes in the
  order they were made (so order per publishing connection survives);
* the subscriber thread owns the single SUBSCRIBE connection of the process.
  It subscribes to a channel when the first local subscriber of that
  (namespace, topic) appears and unsubscribes when the last one leaves, so
  Redis traffic follows interest.  Messages it receives are handed to the
  server's hub for local delivery.

When Redis goes away, local delivery carries on; relays made meanwhile are
dropped (delivery is at-most-once) and the error is logged once per outage
and passed to ``on_broker_error``.  The subscriber reconnects with
exponential backoff and subscribes again to every channel of current
interest.  An idle subscriber connection is pinged every
``health_check_interval`` seconds and replaced when no answer comes.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from queue import Empty
from typing import Any

from gevent.monkey import get_original

from ..base.errors import DependencyMissing
from ..base.threads import RealLock, start_thread
from ..protocol.payload import Outgoing
from .broker import Broker, Deliver, Interests, channel_name, decode_envelope, encode_envelope, new_origin

log = logging.getLogger("syncws.broker")

_SimpleQueue = get_original("queue", "SimpleQueue")

_STOP = object()
_BATCH = 1000  # relays sent to Redis in one pipelined round trip at most


def require_redis() -> Any:
    try:
        import redis
    except ImportError:  # pragma: no cover - depends on the install
        raise DependencyMissing("the Redis broker needs redis-py: pip install 'syncws[redis]'") from None
    return redis


class RedisBroker(Broker):
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "syncws",
        on_broker_error: Callable[[BaseException], Any] | None = None,
        health_check_interval: float = 10.0,
        max_backoff: float = 5.0,
        max_pending: int = 10_000,
    ) -> None:
        self._redis_module = require_redis()
        self.url = url
        self.prefix = prefix
        self.on_broker_error = on_broker_error
        self.health_check_interval = health_check_interval
        self.max_backoff = max_backoff
        self.max_pending = max_pending
        self.origin = new_origin()
        self._deliver: Deliver | None = None
        self._lock = RealLock()
        self._channels: dict[str, int] = {}  # channel -> 1 while there is local interest
        self._commands: deque[Any] = deque()  # (subscribe?, channel) for the subscriber thread
        self._outbox = _SimpleQueue()
        self._running = False
        self._stopped = RealLock()  # held until stop(): a backoff wait that stop() cuts short
        self._stopped.acquire()
        self._relay_down_until = 0.0
        self._relay_failed = False
        self.dropped = 0  # relays dropped while Redis was unreachable
        self.connected = False  # the subscriber connection is up and subscribed
        self._threads_done: list[Any] = []

    # -- Broker interface ------------------------------------------------------
    def start(self, deliver: Deliver, interests: Interests) -> None:
        self._deliver = deliver
        self._running = True
        for channel in (channel_name(self.prefix, ns, topic) for ns, topic in interests()):
            self._channels[channel] = 1
        for target in (self._relay_loop, self._subscribe_loop):
            done = RealLock()
            done.acquire()
            self._threads_done.append(done)
            start_thread(self._run_thread, target, done)

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._stopped.release()
        self._outbox.put(_STOP)
        for done in self._threads_done:
            if done.acquire(timeout=5):
                done.release()

    def relay(self, namespace: str | None, topic: str, outgoing: Outgoing) -> None:
        if not self._running:
            return
        if self._outbox.qsize() >= self.max_pending:
            self.dropped += 1  # Redis is too slow or away: drop rather than grow
            return
        channel = channel_name(self.prefix, namespace, topic)
        self._outbox.put((channel, encode_envelope(self.origin, namespace, topic, outgoing)))

    def interest(self, namespace: str | None, topic: str, present: bool) -> None:
        channel = channel_name(self.prefix, namespace, topic)
        with self._lock:
            if present:
                self._channels[channel] = 1
            else:
                self._channels.pop(channel, None)
            self._commands.append((present, channel))

    @property
    def channels(self) -> frozenset[Any]:
        """Channels this process wants to be subscribed to."""
        return frozenset(self._channels)

    # -- threads ------------------------------------------------------------------
    def _run_thread(self, target: Callable[[], None], done: Any) -> None:
        try:
            target()
        except Exception:
            log.exception("syncws: broker thread crashed")
        finally:
            done.release()

    def _client(self, **kwargs: Any) -> Any:
        return self._redis_module.Redis.from_url(self.url, socket_connect_timeout=2, socket_keepalive=True, **kwargs)

    def _report(self, error: BaseException, what: str) -> None:
        log.warning("syncws: Redis broker %s failed: %s", what, error)
        callback = self.on_broker_error
        if callback is not None:
            try:
                callback(error)
            except Exception:
                log.exception("syncws: on_broker_error raised")

    def _next_batch(self) -> list[Any] | None:
        """Block for one relay, then take whatever else is already waiting.

        None means stop.  Batching makes a burst one Redis round trip per
        ``_BATCH`` messages instead of one per message.
        """
        first = self._outbox.get()
        if first is _STOP:
            return None
        batch = [first]
        while len(batch) < _BATCH:
            try:
                item = self._outbox.get_nowait()
            except Empty:
                break
            if item is _STOP:
                self._outbox.put(_STOP)  # seen after this batch is sent
                break
            batch.append(item)
        return batch

    def _relay_loop(self) -> None:
        client = self._client(socket_timeout=5)
        errors = (self._redis_module.RedisError, OSError)
        backoff = 0.1
        while True:
            batch = self._next_batch()
            if batch is None:
                break
            if time.monotonic() < self._relay_down_until:
                self.dropped += len(batch)
                continue
            try:
                pipe = client.pipeline(transaction=False)  # in order, one round trip
                for channel, data in batch:
                    pipe.publish(channel, data)
                pipe.execute()
            except errors as exc:
                self.dropped += len(batch)
                if not self._relay_failed:
                    self._report(exc, "relay")
                self._relay_failed = True
                self._relay_down_until = time.monotonic() + backoff
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if self._relay_failed:
                log.info("syncws: Redis broker relay is back")
            self._relay_failed = False
            backoff = 0.1
        client.close()

    def _subscribe_loop(self) -> None:
        errors = (self._redis_module.RedisError, OSError)
        backoff = 0.1
        reported = False
        while self._running:
            pubsub = None
            try:
                # A timeout on every socket operation, so a connection that Redis
                # accepts but never answers cannot hang the handshake forever
                # (redis-py < 8 has no default); idle reads have their own.
                timeout = min(5.0, max(1.0, 2 * self.health_check_interval))
                pubsub = self._client(socket_timeout=timeout).pubsub(ignore_subscribe_messages=True)
                with self._lock:  # a fresh connection takes the whole current set
                    self._commands.clear()
                    channels = list(self._channels)
                # A private control channel keeps the connection subscribed (and
                # so health-checkable) even when there is no interest yet.
                pubsub.subscribe(f"{self.prefix}:ctl:{self.origin}", *channels)
                self.connected = True
                if reported:
                    log.info("syncws: Redis broker subscriber reconnected")
                reported = False
                backoff = 0.1
                self._listen(pubsub)
            except errors as exc:
                self.connected = False
                if not reported:
                    self._report(exc, "subscriber")
                    reported = True
                if self._stopped.acquire(timeout=backoff):  # stop() was called
                    self._stopped.release()
                backoff = min(backoff * 2, self.max_backoff)
            finally:
                self.connected = False
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass

    def _listen(self, pubsub: Any) -> None:
        last_heard = time.monotonic()
        pinged = False
        interval = self.health_check_interval
        while self._running:
            while self._commands:
                present, channel = self._commands.popleft()
                if present:
                    pubsub.subscribe(channel)
                else:
                    pubsub.unsubscribe(channel)
            message = pubsub.get_message(timeout=0.05)
            now = time.monotonic()
            if message is None:
                if now - last_heard > 2 * interval:
                    raise ConnectionError("Redis did not answer the health check")
                if now - last_heard > interval and not pinged:
                    pubsub.ping("syncws-health")
                    pinged = True
                continue
            last_heard, pinged = now, False
            if message.get("type") == "message":
                self._on_message(message["data"])

    def _on_message(self, data: bytes) -> None:
        try:
            origin, namespace, topic, outgoing = decode_envelope(data)
        except ValueError as exc:
            log.warning("syncws: dropped a malformed relayed message: %s", exc)
            return
        if origin == self.origin:
            return  # our own publish, already delivered locally
        deliver = self._deliver
        if deliver is not None:
            deliver(namespace, topic, outgoing)
