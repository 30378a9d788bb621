"""Redis pub/sub as the broker between syncws processes.

All Redis I/O happens in three real OS threads of this broker, never in the
server's hub, so a slow or unreachable Redis cannot stall WebSocket traffic:

* the relay thread owns one connection and PUBLISHes local publishes in the
  order they were made (so order per publishing connection survives);
* the subscriber thread owns the single SUBSCRIBE connection of the process.
  It subscribes to a channel when the first local subscriber of that
  (namespace, topic) appears and unsubscribes when the last one leaves, so
  Redis traffic follows interest.  Messages it receives are handed to the
  server's hub for local delivery;
* the reader thread owns the connection of recoveries and presence reads,
  which callers queue and wait for (a socket is only ever used by the thread
  that made it: under gevent's monkey-patching it belongs to that thread's
  hub).

With ``history_size`` set, publishes are stored in Redis Streams by a Lua
script that also publishes them (:mod:`syncws.pubsub.redis_scripts`), and
come back to their own process through the subscriber like everyone else's,
so offsets and order agree on every process.  Presence entries are written by
the relay thread and refreshed every third of ``presence_ttl``.

When Redis goes away, local delivery carries on; relays made meanwhile are
dropped (delivery is at-most-once) and the error is logged once per outage
and passed to ``on_broker_error``.  A stored publish that cannot reach Redis
is delivered locally without an offset.  The subscriber reconnects with
exponential backoff and subscribes again to every channel of current
interest.  An idle subscriber connection is pinged every
``health_check_interval`` seconds and replaced when no answer comes.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from queue import Empty
from typing import Any

from gevent.monkey import get_original

from ..base.errors import DependencyMissing
from ..base.threads import RealLock, ThreadLog, start_thread
from ..protocol.frames import OP_BINARY, OP_TEXT
from ..protocol.payload import Outgoing
from . import redis_scripts
from .broker import (
    AfterDeliveries,
    Broker,
    Deliver,
    Interests,
    PresenceEntries,
    channel_name,
    command_channel,
    decode_command,
    decode_envelope,
    encode_command,
    encode_envelope,
    new_origin,
)
from .registry import ABSENT

log = logging.getLogger("syncws.broker")

_SimpleQueue = get_original("queue", "SimpleQueue")

_STOP = object()
_BATCH = 1000  # relays sent to Redis in one pipelined round trip at most
_RELAY, _STORED, _PRESENCE, _ANNOUNCE = range(4)  # what an item of the relay queue asks for


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
        read_timeout: float = 3.0,
    ) -> None:
        self._redis_module = require_redis()
        self.url = url
        self.prefix = prefix
        self.on_broker_error = on_broker_error
        self.health_check_interval = health_check_interval
        self.max_backoff = max_backoff
        self.max_pending = max_pending
        #: Bounds a recovery's read and a presence read when Redis is slow or away.
        self.read_timeout = read_timeout
        self.origin = new_origin()
        self.history_size = 0
        self.history_ttl: float | None = None
        self.presence_ttl = 30.0
        self._presence_entries: PresenceEntries | None = None
        self._after_deliveries: AfterDeliveries | None = None
        self._control = f"{prefix}:ctl:{self.origin}"
        self._commands_channel = command_channel(prefix)
        self._confirmed: set[str] = set()  # channels Redis confirmed subscribing
        self._waiters: dict[str, list[Any]] = {}  # channel or marker -> locks to release
        self._reads = _SimpleQueue()  # (script, args, result box, release) for the reader thread
        self._scripts: dict[str, Any] = {}
        self._deliver: Deliver | None = None
        self._lock = RealLock()
        self._channels: dict[str, int] = {}  # channel -> 1 while there is local interest
        self._commands: deque[Any] = deque()  # (subscribe?, channel) for the subscriber thread
        self._outbox = _SimpleQueue()
        #: (namespace, topic, entry id) -> info JSON, or None for a removal; sent by the relay thread.
        self._presence_pending: dict[tuple[str, str, str], str | None] = {}
        self.presence_dropped = 0  # presence changes not sent because too many were waiting
        self._running = False
        self._stopped = RealLock()  # held until stop(): a backoff wait that stop() cuts short
        self._stopped.acquire()
        self._relay_down_until = 0.0
        self._relay_failed = False
        self.dropped = 0  # relays dropped while Redis was unreachable
        self.relayed = 0  # publishes Redis took (relays and stored publishes)
        self.reconnects = 0  # times the subscriber connection was made again after losing Redis
        self.connected = False  # the subscriber connection is up and subscribed
        self._outage = False  # the subscriber lost Redis and has not reconnected yet
        self._threads_done: list[Any] = []
        #: Some live servers of this prefix keep a history and some do not (from the last
        #: announcement): publishes to every namespace then go out for both (redis_scripts).
        self.fleet_mixed = False
        self._fleet_warning = ""  # what was last logged about the other servers' settings
        #: Every log line of this broker: its threads and its reads run outside the hub.
        self._log = ThreadLog(log)

    # -- Broker interface ------------------------------------------------------
    def configure(
        self,
        history_size: int,
        history_ttl: float | None,
        presence_ttl: float,
        presence_entries: PresenceEntries,
        after_deliveries: AfterDeliveries,
    ) -> None:
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.presence_ttl = presence_ttl
        self._presence_entries = presence_entries
        self._after_deliveries = after_deliveries
        self._log.hand_off = after_deliveries

    @property
    def stores_history(self) -> bool:  # type: ignore[override]
        return self.history_size > 0

    shares_presence = True

    def start(self, deliver: Deliver, interests: Interests) -> None:
        self._deliver = deliver
        self._running = True
        for channel in (channel_name(self.prefix, ns, topic) for ns, topic in interests()):
            self._channels[channel] = 1
        self._outbox.put((_ANNOUNCE,))  # this process's settings, for Publishers and the other servers
        for target in (self._relay_loop, self._subscribe_loop, self._read_loop):
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
        self._reads.put(_STOP)
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
        self._outbox.put((_RELAY, channel, encode_envelope(self.origin, namespace, topic, outgoing)))

    def publish_stored(self, namespace: str | None, topic: str, outgoing: Outgoing, exclude_id: str | None) -> None:
        if not self._running or self._outbox.qsize() >= self.max_pending:
            self.dropped += 1
            self._deliver_unstored(namespace, topic, outgoing, exclude_id)
            return
        self._outbox.put((_STORED, namespace, topic, outgoing, exclude_id))

    def _deliver_unstored(self, namespace: str | None, topic: str, outgoing: Outgoing, exclude_id: str | None) -> None:
        """Redis could not store a publish: local subscribers still get it, without an offset."""
        deliver = self._deliver
        if deliver is not None:
            deliver(namespace, topic, outgoing, exclude_id)

    def presence_changed(self, namespace: str, topic: str, entry_id: str, info: Any) -> None:
        """Coalesced per entry: only an entry's last state is sent, on the relay's next round trip.

        Publishes and presence changes never share a bound: a client that
        subscribes and unsubscribes in a loop used to fill the relay queue
        (186,000 items) and make it drop publishes.  At most ``max_pending``
        entries wait; past that a change to a new entry is dropped (counted in
        ``presence_dropped``): an addition comes back with the next refresh
        (every ``presence_ttl / 3``), a removal expires after ``presence_ttl``.
        """
        if not self._running:
            return
        key = (namespace, topic, entry_id)
        with self._lock:
            pending = self._presence_pending
            if key not in pending and len(pending) >= self.max_pending:
                self.presence_dropped += 1
                return
            wake = not pending
            pending[key] = None if info is ABSENT else info
        if wake:
            self._outbox.put((_PRESENCE,))

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
            self._log.exception("syncws: broker thread crashed")
        finally:
            done.release()

    def _client(self, **kwargs: Any) -> Any:
        return self._redis_module.Redis.from_url(self.url, socket_connect_timeout=2, socket_keepalive=True, **kwargs)

    def _script(self, client: Any, name: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = client.register_script(getattr(redis_scripts, name))
        return script

    def _ttl_ms(self) -> int:
        return 0 if self.history_ttl is None else max(1, int(self.history_ttl * 1000))

    def _report(self, error: BaseException, what: str) -> None:
        self._log.warning("syncws: Redis broker %s failed: %s", what, error)
        callback = self.on_broker_error
        if callback is not None:
            try:
                callback(error)
            except Exception:
                self._log.exception("syncws: on_broker_error raised")

    def _next_batch(self, timeout: float | None) -> list[Any] | None:
        """Block for one relay item (at most ``timeout``), then take what else waits (see :func:`_batch`).

        None means stop; an empty batch, that the timeout passed.
        """
        try:
            first = self._outbox.get(timeout=timeout)
        except Empty:
            return []
        return _batch(self._outbox, first)

    def _relay_loop(self) -> None:
        client = self._client(socket_timeout=5)
        errors = (self._redis_module.RedisError, OSError)
        backoff = 0.1
        refresh = self.presence_ttl / 3  # presence entries are refreshed this often
        next_refresh = time.monotonic() + refresh
        while True:
            batch = self._next_batch(max(0.0, next_refresh - time.monotonic()))
            if batch is None:
                break
            if time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + refresh
                batch += [None, (_ANNOUNCE,)]  # refresh this process's presence entries and settings
            if not batch:
                continue
            if time.monotonic() < self._relay_down_until:
                self._give_up(batch)
                continue
            try:
                results = self._send(client, batch)
            except errors as exc:
                self._give_up(batch)
                if not self._relay_failed:
                    self._report(exc, "relay")
                self._relay_failed = True
                self._relay_down_until = time.monotonic() + backoff
                backoff = min(backoff * 2, self.max_backoff)
                continue
            for item, result in results:
                if isinstance(result, Exception):
                    self._log.warning("syncws: Redis refused a broker command: %s", result)
                    self._give_up([item])
                elif item[0] in (_RELAY, _STORED):
                    self.relayed += 1
                elif item[0] == _ANNOUNCE:
                    self._compare_settings(result)
            if self._relay_failed:
                self._log.info("syncws: Redis broker relay is back")
            self._relay_failed = False
            backoff = 0.1
        client.close()

    def _send(self, client: Any, batch: list[Any]) -> list[tuple[Any, Any]]:
        """One pipelined round trip for a batch, in order; ``(item, result or error)`` per item.

        A presence refresh (None) is several commands whose results are not returned.
        """
        pipe = client.pipeline(transaction=False)
        prefix = self.prefix
        owners: list[Any] = []  # the item each queued command belongs to
        for item in batch:
            queued = len(pipe.command_stack)
            if item is None:
                self._refresh_presence(pipe)
                owners += [None] * (len(pipe.command_stack) - queued)
                continue
            owners.append(item)
            kind = item[0]
            if kind == _RELAY:
                pipe.publish(item[1], item[2])
            elif kind == _STORED:
                _, namespace, topic, outgoing, exclude = item
                args = redis_scripts.publish_args(
                    prefix,
                    self.origin,
                    namespace,
                    topic,
                    outgoing,
                    exclude,
                    self.history_size,
                    self._ttl_ms(),
                    self.fleet_mixed,
                )
                self._script(client, "PUBLISH")(args=args, client=pipe)
            elif kind == _PRESENCE:
                with self._lock:
                    changes, self._presence_pending = self._presence_pending, {}
                self._send_presence(pipe, changes)
                owners[-1:] = [None] * (len(pipe.command_stack) - queued)
            else:  # _ANNOUNCE
                args = [prefix, self.origin, int(self.presence_ttl * 1000), self.history_size, self._ttl_ms()]
                self._script(client, "ANNOUNCE")(args=args, client=pipe)
        results = pipe.execute(raise_on_error=False)
        return [(item, result) for item, result in zip(owners, results, strict=True) if item is not None]

    def _send_presence(self, pipe: Any, changes: dict[tuple[str, str, str], str | None]) -> None:
        additions: list[Any] = []
        remove = self._script(pipe, "PRESENCE_REMOVE")
        for (namespace, topic, entry_id), info in changes.items():
            if info is None:
                remove(args=[self.prefix, namespace, topic, entry_id], client=pipe)
            else:
                additions += [namespace, topic, entry_id, info]
        self._add_presence(pipe, additions)

    def _add_presence(self, pipe: Any, flat: list[Any]) -> None:
        """PRESENCE_ADD for ``flat`` (namespace, topic, id, info, ...), 500 entries per script call."""
        script = self._script(pipe, "PRESENCE_ADD")
        ttl = int(self.presence_ttl * 1000)
        for start in range(0, len(flat), 2000):
            script(args=[self.prefix, ttl, *flat[start : start + 2000]], client=pipe)

    def _refresh_presence(self, pipe: Any) -> None:
        if self._presence_entries is None:
            return
        for entries in self._presence_entries():
            self._add_presence(pipe, [value for entry in entries for value in entry])

    def _compare_settings(self, values: list[Any]) -> None:
        """Log (once per change) when the live servers of this prefix disagree on history settings.

        A disagreement is a deployment mistake (a server started without the
        others' ``--history-size``): publishes still reach every subscriber
        (see ``fleet_mixed``), but only the servers with history store them.
        """
        mine = f"{self.history_size} {self._ttl_ms()}"
        others: dict[str, int] = {}
        sizes = set()
        for raw in values:
            value = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
            size, _, ttl = value.partition(" ")
            sizes.add(size != "0")
            if value != mine:
                text = f"history_size={size}" + (f" history_ttl={int(ttl) / 1000:g}s" if ttl not in ("", "0") else "")
                others[text] = others.get(text, 0) + 1
        self.fleet_mixed = len(sizes) > 1
        warning = ", ".join(
            f"{text} ({count} process{'es' if count > 1 else ''})" for text, count in sorted(others.items())
        )
        if warning == self._fleet_warning:
            return
        self._fleet_warning = warning
        if warning:
            self._log.warning(
                "syncws: servers sharing the Redis prefix %r disagree on history settings: this process has "
                "history_size=%d history_ttl=%s, others have %s. Every subscriber still gets every publish, but "
                "only servers with history store them: give every server the same --history-size/--history-ttl.",
                self.prefix,
                self.history_size,
                self.history_ttl,
                warning,
            )
        else:
            self._log.info(
                "syncws: every server sharing the Redis prefix %r has the same history settings now", self.prefix
            )

    def _give_up(self, batch: list[Any]) -> None:
        """Redis did not take these: relays are dropped (counted), stored publishes delivered locally."""
        for item in batch:
            if item is None:
                continue
            if item[0] == _STORED:
                self._deliver_unstored(*item[1:])
            if item[0] in (_RELAY, _STORED):
                self.dropped += 1

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
                pubsub = self._client(socket_timeout=timeout).pubsub()
                with self._lock:  # a fresh connection takes the whole current set
                    self._commands.clear()
                    channels = list(self._channels)
                # A private control channel keeps the connection subscribed (and
                # so health-checkable) even when there is no interest yet.
                pubsub.subscribe(self._control, self._commands_channel, *channels)
                self.connected = True
                self._outage = False
                if reported:
                    self.reconnects += 1
                    self._log.info("syncws: Redis broker subscriber reconnected")
                reported = False
                backoff = 0.1
                self._listen(pubsub)
            except errors as exc:
                self.connected = False
                self._outage = True
                if not reported:
                    self._report(exc, "subscriber")
                    reported = True
                if self._stopped.acquire(timeout=backoff):  # stop() was called
                    self._stopped.release()
                backoff = min(backoff * 2, self.max_backoff)
            finally:
                self.connected = False
                with self._lock:
                    self._confirmed.clear()
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
            kind = message.get("type")
            if kind == "message":
                channel = message["channel"]
                if channel == self._control.encode():
                    self._release(message["data"].decode("ascii", "replace"))
                elif channel == self._commands_channel.encode():
                    self._on_command(message["data"])
                else:
                    self._on_message(message["data"])
            elif kind in ("subscribe", "unsubscribe"):
                channel = message["channel"].decode("utf-8", "replace")
                with self._lock:
                    if kind == "subscribe":
                        self._confirmed.add(channel)
                    else:
                        self._confirmed.discard(channel)
                if kind == "subscribe":
                    self._release(channel)

    def _release(self, key: str) -> None:
        """Wake what waits for a channel's confirmation or for a marker."""
        with self._lock:
            waiters = self._waiters.pop(key, [])
        for release in waiters:
            release()

    def command(self, command: dict[str, Any]) -> None:
        if not self._running:
            return
        if self._outbox.qsize() >= self.max_pending:
            self.dropped += 1
            return
        data = encode_command(self.origin, command["op"], **{k: v for k, v in command.items() if k != "op"})
        self._outbox.put((_RELAY, self._commands_channel, data))

    def _on_command(self, data: bytes) -> None:
        try:
            command = decode_command(data)
        except ValueError as exc:
            self._log.warning("syncws: dropped a malformed broker command: %s", exc)
            return
        handler = self.on_command
        if command["o"] != self.origin and handler is not None:
            handler(command)

    def _on_message(self, data: bytes) -> None:
        try:
            origin, namespace, topic, outgoing, exclude, audience = decode_envelope(data)
        except ValueError as exc:
            self._log.warning("syncws: dropped a malformed relayed message: %s", exc)
            return
        if audience is not None and (audience == "h") != self.stores_history:
            return  # the copy for servers with (h) or without (p) history; this process takes the other
        if origin == self.origin and outgoing.offset is None:
            return  # our own relay, already delivered locally (stored publishes come back: see above)
        deliver = self._deliver
        if deliver is not None:
            deliver(namespace, topic, outgoing, exclude if origin == self.origin else None)

    # -- reads (blocking; called from a thread that may wait, never the hub) ----------
    def _wait(self, key: str, ready: Callable[[], bool], deadline: float) -> bool:
        """Wait until ``ready()`` (checked under the lock) or ``_release(key)``; False at the deadline."""
        done = RealLock()
        done.acquire()
        with self._lock:
            if ready():
                return True
            self._waiters.setdefault(key, []).append(done.release)
        if done.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return True
        with self._lock:
            waiters = self._waiters.get(key, [])
            if done.release in waiters:
                waiters.remove(done.release)
            if not waiters:
                self._waiters.pop(key, None)
        return False

    def _read(self, name: str, args: list[Any]) -> Any:
        """Run a read script through the reader thread; wait at most ``read_timeout``.

        One thread owns the reading connection: a socket is only ever used by
        the thread that made it (with gevent's monkey-patching, a socket
        belongs to its thread's hub), and every concurrent read shares one
        pipelined round trip.  Raises the Redis error, or TimeoutError.
        """
        if not self._running:
            raise self._redis_module.ConnectionError("the broker is not running")
        done = RealLock()
        done.acquire()
        box: list[Any] = []
        self._reads.put((name, args, box, done.release))
        if not done.acquire(timeout=self.read_timeout + 1):
            raise TimeoutError("Redis did not answer in time")
        ok, value = box[0]
        if ok:
            return value
        raise value

    def _read_loop(self) -> None:
        client = self._client(socket_timeout=self.read_timeout)
        while True:
            batch = _batch(self._reads, self._reads.get())
            if batch is None:
                break
            results = self._run_reads(client, batch)
            for (_, _, box, release), result in zip(batch, results, strict=True):
                box.append(result)
                release()
        client.close()

    def _run_reads(self, client: Any, batch: list[Any]) -> list[tuple[bool, Any]]:
        """One pipelined round trip for the batch; ``(ok, result or error)`` per read.

        An error that is not the connection's (an argument redis-py cannot
        encode fails the whole pipeline before anything is sent) is one
        caller's: each read is then run on its own, so a bad one fails alone.
        """
        redis = self._redis_module
        try:
            pipe = client.pipeline(transaction=False)
            for name, args, _, _ in batch:
                self._script(client, name)(args=args, client=pipe)
            return [(not isinstance(r, Exception), r) for r in pipe.execute(raise_on_error=False)]
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            return [(False, exc)] * len(batch)
        except redis.RedisError as exc:
            if len(batch) == 1:
                return [(False, exc)]
            return [self._run_reads(client, [read])[0] for read in batch]

    def read_history(
        self, namespace: str, topic: str, since: str | None, limit: int | None, *, recovering: bool = False
    ) -> tuple[list[Outgoing], bool, str | None] | None:
        deadline = time.monotonic() + self.read_timeout
        marker = ""
        if recovering:
            if self._outage:
                return None  # known to be down: answer at once rather than wait for the timeout
            # Live delivery must be on before the read: wait until Redis confirms
            # the subscription the new local subscriber caused.
            channel = channel_name(self.prefix, namespace, topic)
            if not self._wait(channel, lambda: channel in self._confirmed, deadline):
                return None
            marker = uuid.uuid4().hex
            arrived = RealLock()
            arrived.acquire()
            after = self._after_deliveries
            with self._lock:
                # The marker comes back on the control channel after every publish
                # stored before the read; then the server makes the deliveries
                # handed over before it, and only then does this return.
                self._waiters[marker] = [lambda: after(arrived.release) if after else arrived.release()]
        args = [self.prefix, namespace, topic, since or "", self._ttl_ms()]
        args += [-1 if recovering and since is None else (limit or 0), "1" if recovering else "0"]
        args += [self._control if marker else "", marker]
        try:
            recovered, newest, entries = self._read("READ", args)
        except (self._redis_module.RedisError, OSError) as exc:
            self._log.warning("syncws: reading a history from Redis failed: %s", exc)
            with self._lock:
                self._waiters.pop(marker, None)
            return None
        if marker and not arrived.acquire(timeout=max(0.0, deadline - time.monotonic())):
            with self._lock:
                self._waiters.pop(marker, None)
            return None
        return [_from_entry(topic, entry) for entry in entries], bool(recovered), newest.decode() or None

    def read_presence(self, topic: str, namespace: str | None, count_only: bool = False) -> Any:
        args = [self.prefix, topic, namespace or "", "1" if count_only else "0"]
        found = self._read("PRESENCE_READ", args)
        if count_only:
            return int(found)
        return [{"id": found[i].decode(), "info": json.loads(found[i + 1])} for i in range(0, len(found), 2)]


def _batch(queue: Any, first: Any) -> list[Any] | None:
    """``first`` and whatever else is already waiting in ``queue``, up to ``_BATCH``; None for stop.

    A stop found behind other items is put back, to be seen after this
    batch is sent.  Batching makes a burst one Redis round trip per
    ``_BATCH`` items instead of one per item.
    """
    if first is _STOP:
        return None
    batch = [first]
    while len(batch) < _BATCH:
        try:
            item = queue.get_nowait()
        except Empty:
            break
        if item is _STOP:
            queue.put(_STOP)
            break
        batch.append(item)
    return batch


def _from_entry(topic: str, entry: Any) -> Outgoing:
    """A stream entry ``[id, [field, value, ...]]`` as a stamped publish."""
    entry_id, flat = entry
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    opcode = OP_BINARY if fields.get(b"b") == b"1" else OP_TEXT
    outgoing = Outgoing.from_payload(opcode, fields.get(b"d", b""), is_json=fields.get(b"j") == b"1")
    outgoing.topic, outgoing.offset = topic, entry_id.decode()
    return outgoing
