"""Redis pub/sub as the broker between syncws processes.

One server, a Sentinel-watched master or a Redis Cluster (see
:mod:`syncws.pubsub.redis_target` for the URLs).  All Redis I/O happens in
three real OS threads of this broker, never in the server's hub, so a slow or
unreachable Redis cannot stall WebSocket traffic:

* the relay thread owns one client and PUBLISHes local publishes in the
  order they were made (so order per publishing connection survives);
* the subscriber thread owns the subscribing connections of the process:
  one for a single Redis (or classic pub/sub on a cluster), one per shard
  with sharded pub/sub on a cluster (Redis 7+: ``SSUBSCRIBE``; a publish then
  goes to the shard of its topic only, not to every node).  It subscribes to
  a channel when the first local subscriber of that (namespace, topic)
  appears and unsubscribes when the last one leaves, so Redis traffic follows
  interest.  Messages it receives are handed to the server's hub for local
  delivery;
* the reader thread owns the client of recoveries and presence reads, which
  callers queue and wait for (a socket is only ever used by the thread that
  made it: under gevent's monkey-patching it belongs to that thread's hub).

With ``history_size`` set, publishes are stored in Redis Streams by a Lua
script that also publishes them (:mod:`syncws.pubsub.redis_scripts`), and
come back to their own process through the subscriber like everyone else's,
so offsets and order agree on every process.  Presence entries are written by
the relay thread and refreshed every third of ``presence_ttl``.

When Redis goes away, local delivery carries on; relays made meanwhile are
dropped (delivery is at-most-once) and the error is logged once per outage
and passed to ``on_broker_error``.  A stored publish that cannot reach Redis
is delivered locally without an offset.  A subscriber connection that is lost
(a restart, a failover, a slot that moved) is made again with exponential
backoff, to wherever its channels live now, and subscribes again; with
history on, each of its channels is then *resynced*: what was stored after
the last publish this process delivered is read and delivered, and when that
cannot be done without a gap (the history was trimmed past it, or a failover
lost publishes that had been delivered), the topic's local subscribers are
told to reconnect (``on_gap``), so that they resume with ``recovered=False``
rather than miss something silently.  An idle subscriber connection is pinged
every ``health_check_interval`` seconds and replaced when no answer comes.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import random
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from queue import Empty
from typing import Any

from gevent.monkey import get_original

from ..base.errors import BrokerError
from ..base.threads import Outcome, Raised, RealLock, Reply, Returned, ThreadLog, start_thread
from ..protocol.frames import OP_BINARY, OP_TEXT
from ..protocol.payload import Outgoing
from . import redis_scripts
from .broker import (
    AfterDeliveries,
    Broker,
    Deliver,
    Interests,
    Presence,
    PresenceEntries,
    channel_name,
    command_channel,
    decode_command,
    decode_envelope,
    encode_command,
    encode_envelope,
    new_origin,
)
from .history import parse_offset
from .redis_target import RedisTarget, Topology, parse_broker_url, redis_errors, require_redis

log = logging.getLogger("syncws.broker")

_SimpleQueue = get_original("queue", "SimpleQueue")
_select = get_original("select", "select")

_STOP = object()
_BATCH = 1000  # relays sent to Redis in one pipelined round trip at most


# What an item of the relay queue asks the relay thread for.
@dataclass(frozen=True, slots=True)
class _Relay:
    """PUBLISH ``data`` on ``channel``: a publish for the other servers, or a revoke command."""

    channel: str
    data: bytes


@dataclass(frozen=True, slots=True)
class _Stored:
    """Store a publish in its topic's stream and publish it, in one script (history in Redis)."""

    namespace: str | None
    topic: str
    outgoing: Outgoing
    exclude_id: str | None


class _Signal(enum.Enum):
    """Relay-queue items that carry nothing: the state they act on is the broker's."""

    PRESENCE = "presence"  # send the pending presence changes
    REFRESH = "refresh"  # re-add this process's presence entries before they expire
    ANNOUNCE = "announce"  # this process's settings, for Publishers and the other servers


_Command = _Relay | _Stored | _Signal
_MARKER = b"m:"  # a recovery's marker on a topic channel: b"m:<origin>:<key>" (an envelope starts with "{")
#: A classic PUBLISH on a cluster, inside a pipeline (redis-py refuses a bare PUBLISH there):
#: a script without keys runs on any primary, and the cluster bus carries the message to every node.
_CLASSIC_PUBLISH = "return redis.call('PUBLISH', ARGV[1], ARGV[2])"

__all__ = ["RedisBroker", "require_redis"]


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
        **redis_options: Any,
    ) -> None:
        self._redis_module = require_redis()
        self._errors = redis_errors(self._redis_module)
        #: The parsed URL: ``redis_options`` (redis-py connection options, e.g. ``ssl_ca_certs``)
        #: go to every connection.
        self.target: RedisTarget = parse_broker_url(url, **redis_options)
        self.url = url
        self.prefix = redis_scripts.check_prefix(prefix)
        self.on_broker_error = on_broker_error
        self.health_check_interval = health_check_interval
        self.max_backoff = max_backoff
        self.max_pending = max_pending
        #: Bounds a recovery's read and a presence read when Redis is slow or away.
        self.read_timeout = read_timeout
        #: Every log line of this broker: its threads and its reads run outside the hub.
        self._log = ThreadLog(log)
        self._init_state()

    def _init_state(self) -> None:
        """What the broker's threads share and what they keep of Redis (each noted with its thread)."""
        self.origin = new_origin()
        self._origin_bytes = self.origin.encode("ascii")
        self.history_size = 0
        self.history_ttl: float | None = None
        self.presence_ttl = 30.0
        self._presence_entries: PresenceEntries | None = None
        self._after_deliveries: AfterDeliveries | None = None
        self._commands_channel = command_channel(self.prefix)
        self._confirmed: set[str] = set()  # channels Redis confirmed subscribing
        self._waiters: dict[str, list[Any]] = {}  # channel or marker -> locks to release
        self._reads = _SimpleQueue()  # (script, keys, args, Reply) for the reader thread
        self._deliver: Deliver | None = None
        self._lock = RealLock()
        #: channel -> (namespace, topic) while there is local interest.
        self._channels: dict[str, tuple[str | None, str]] = {}
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
        self.connected: bool | None = False  # every subscriber connection is up and subscribed
        self._outage = False  # a subscriber connection was lost and is not back yet
        self._threads_done: list[Any] = []
        #: Some live servers of this prefix keep a history and some do not (from the last
        #: announcement): publishes to every namespace then go out for both (redis_scripts).
        self.fleet_mixed = False
        self._fleet_warning = ""  # what was last logged about the other servers' settings
        #: Sharded pub/sub (a cluster on Redis 7+); None until a thread has asked Redis.
        self.sharded: bool | None = None
        #: topic -> the namespaces of its history last seen in Redis (relay thread only).
        self._spaces: dict[str, list[str]] = {}
        #: channel -> (epoch, seq, crc32 of the payload) of the last stored publish delivered here:
        #: duplicates are dropped, and a lost connection resyncs from it; crc None: only where the
        #: history stood when the channel was subscribed (subscriber thread only).
        self._last: dict[str, tuple[int, int, int | None]] = {}
        #: topic -> the keys of its presence, for the topics with local entries (relay thread only).
        self._presence_keys: dict[str, list[str]] = {}
        #: ``on_gap(namespace, topic)``: set by the server; a resync could not bridge a gap.
        self.on_gap: Callable[[str, str], None] | None = None

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
    def stores_history(self) -> bool:
        return self.history_size > 0

    shares_presence = True

    def start(self, deliver: Deliver, interests: Interests) -> None:
        self._deliver = deliver
        self._running = True
        for namespace, topic in interests():
            self._channels[channel_name(self.prefix, namespace, topic)] = (namespace, topic)
        self._outbox.put(_Signal.ANNOUNCE)
        for target in (self._relay_loop, self._subscribe_loop, self._read_loop):
            done = RealLock()
            done.acquire()
            self._threads_done.append(done)
            start_thread(self._run_thread, target, done, off_hub=True)

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
        self._outbox.put(_Relay(channel, encode_envelope(self.origin, namespace, topic, outgoing)))

    def publish_stored(self, namespace: str | None, topic: str, outgoing: Outgoing, exclude_id: str | None) -> None:
        if not self._running or self._outbox.qsize() >= self.max_pending:
            self.dropped += 1
            self._deliver_unstored(namespace, topic, outgoing, exclude_id)
            return
        self._outbox.put(_Stored(namespace, topic, outgoing, exclude_id))

    def _deliver_unstored(self, namespace: str | None, topic: str, outgoing: Outgoing, exclude_id: str | None) -> None:
        """Redis could not store a publish: local subscribers still get it, without an offset."""
        deliver = self._deliver
        if deliver is not None:
            deliver(namespace, topic, outgoing, exclude_id)

    def presence_changed(self, namespace: str, topic: str, entry_id: str, info: str | None) -> None:
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
            pending[key] = info
        if wake:
            self._outbox.put(_Signal.PRESENCE)

    def interest(self, namespace: str | None, topic: str, present: bool) -> None:
        channel = channel_name(self.prefix, namespace, topic)
        with self._lock:
            if present:
                self._channels[channel] = (namespace, topic)
            else:
                self._channels.pop(channel, None)
                # A recovery must wait for the next subscription's confirmation: its marker
                # travels on this channel, and is lost while the channel is not subscribed.
                self._confirmed.discard(channel)
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
        return self.target.client(socket_connect_timeout=2, socket_keepalive=True, **kwargs)

    def _is_sharded(self, client: Any) -> bool:
        """Whether live delivery uses sharded pub/sub; asks Redis once (raises its errors)."""
        if self.sharded is None:
            self.sharded = self.target.sharded(client)
        return self.sharded

    def _eval(self, pipe: Any, name: str, keys: list[str], args: list[Any]) -> None:
        """Queue script ``name`` on ``pipe`` by its SHA1 (``EVALSHA``); :meth:`_execute` runs the pipeline.

        A node that has not loaded the script (a new one, a restarted one, a
        replica a failover promoted) answers NOSCRIPT: :meth:`_execute` loads
        it and runs those calls again.  One way for one server and a cluster,
        whose pipelines cannot load scripts; sending the text every time
        (``EVAL``) cost Redis 4 ms more per 1,000 calls of a 2 KB script.
        """
        pipe.__dict__.setdefault("_syncws_evals", {})[len(pipe)] = (name, keys, args)
        pipe.execute_command("EVALSHA", _sha(name), len(keys), *keys, *args)

    def _execute(self, client: Any, pipe: Any) -> list[Any]:
        """``pipe.execute(raise_on_error=False)``; calls refused with NOSCRIPT run again once their script is loaded.

        A NOSCRIPT answer means the script did not run, so running it again
        repeats nothing.
        """
        evals = pipe.__dict__.get("_syncws_evals", {})
        results: list[Any] = pipe.execute(raise_on_error=False)
        missing = [
            i for i, result in enumerate(results) if isinstance(result, self._redis_module.exceptions.NoScriptError)
        ]
        if not missing or not evals:
            return results
        for name in {evals[i][0] for i in missing}:
            client.script_load(getattr(redis_scripts, name))  # on a cluster: on every primary
        again = client.pipeline(transaction=False)
        for i in missing:
            self._eval(again, *evals[i])
        for i, result in zip(missing, again.execute(raise_on_error=False), strict=True):
            results[i] = result
        return results

    def _publish(self, pipe: Any, client: Any, channel: str, data: bytes) -> None:
        """Queue a live publish on ``pipe``: SPUBLISH (sharded), PUBLISH, or its script on a classic cluster."""
        if self._is_sharded(client):
            pipe.spublish(channel, data)
        elif self.target.topology is Topology.CLUSTER:
            pipe.execute_command("EVAL", _CLASSIC_PUBLISH, 0, channel, data)
        else:
            pipe.publish(channel, data)

    def _ttl_ms(self) -> int:
        return 0 if self.history_ttl is None else max(1, int(self.history_ttl * 1000))

    def _report(self, error: BaseException, what: str) -> None:
        self._log.warning("syncws: Redis broker %s failed: %s", what, _explain(error))
        callback = self.on_broker_error
        if callback is not None:
            try:
                callback(error)
            except Exception:
                self._log.exception("syncws: on_broker_error raised")

    def _next_batch(self, timeout: float | None) -> list[_Command] | None:
        """Block for one relay item (at most ``timeout``), then take what else waits (see :func:`_batch`).

        None means stop; an empty batch, that the timeout passed.
        """
        try:
            first = self._outbox.get(timeout=timeout)
        except Empty:
            return []
        return _batch(self._outbox, first)

    def _relay_loop(self) -> None:
        errors = self._errors
        backoff = 0.1
        refresh = self.presence_ttl / 3  # presence entries are refreshed this often
        next_refresh = time.monotonic() + refresh
        client = None
        retry: list[_Command] = []  # stored publishes to send again with the namespaces Redis named
        while True:
            batch = retry or self._next_batch(max(0.0, next_refresh - time.monotonic()))
            if batch is None:
                break
            if time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + refresh
                batch += [_Signal.REFRESH, _Signal.ANNOUNCE]  # this process's presence entries and settings
            retry = []
            if not batch:
                continue
            if time.monotonic() < self._relay_down_until:
                self._give_up(batch)
                continue
            try:
                if client is None:
                    client = self._client(socket_timeout=5)
                results = self._send(client, batch)
            except errors as exc:
                self._give_up(batch)
                if not self._relay_failed:
                    self._report(exc, "relay")
                self._relay_failed = True
                self._relay_down_until = time.monotonic() + backoff
                backoff = min(backoff * 2, self.max_backoff)
                if self.target.topology is Topology.CLUSTER and client is not None:
                    client.close()  # a failover: find the cluster's nodes again
                    client = None
                continue
            retry = self._settle(results)
            if self._relay_failed:
                self._log.info("syncws: Redis broker relay is back")
            self._relay_failed = False
            backoff = 0.1
        if client is not None:
            client.close()

    def _settle(self, results: list[tuple[_Command, Any]]) -> list[_Command]:
        """Count what Redis took; the stored publishes to send again (their topic's namespaces changed)."""
        retry: list[_Command] = []
        for item, result in results:
            if isinstance(result, Exception):
                self._log.warning("syncws: Redis refused a broker command: %s", _explain(result))
                self._give_up([item])
                continue
            match item:
                case _Stored(topic=topic) if result[0] == -1:
                    self._spaces[topic] = sorted(_text(ns) for ns in result[1])
                    retry.append(item)
                case _Relay() | _Stored():
                    self.relayed += 1
                case _Signal.ANNOUNCE:
                    self._compare_settings(result)
        return retry

    def _send(self, client: Any, batch: list[_Command]) -> list[tuple[_Command, Any]]:
        """One pipelined round trip for a batch, in order; ``(item, result or error)`` per item.

        Presence changes and refreshes are several commands whose results are not returned.
        A stored publish whose topic's namespaces changed comes back with ``-1``
        and is sent again (with its topic's later publishes of this batch,
        which fail the same way, so their order holds).
        """
        pipe = client.pipeline(transaction=False)
        prefix = self.prefix
        owners: list[_Command | None] = []  # the item each queued command belongs to (None: no result wanted)
        for item in batch:
            queued = len(pipe)
            match item:
                case _Relay(channel=channel, data=data):
                    self._publish(pipe, client, channel, data)
                case _Stored(namespace=namespace, topic=topic, outgoing=outgoing, exclude_id=exclude):
                    keys, args = redis_scripts.publish_call(
                        prefix,
                        self.origin,
                        namespace,
                        self._spaces.get(topic, []),
                        topic,
                        outgoing,
                        exclude,
                        self.history_size,
                        self._ttl_ms(),
                        self.fleet_mixed,
                        self._is_sharded(client),
                    )
                    self._eval(pipe, "PUBLISH", keys, args)
                case _Signal.PRESENCE:
                    with self._lock:
                        changes, self._presence_pending = self._presence_pending, {}
                    self._send_presence(pipe, changes)
                case _Signal.REFRESH:
                    self._refresh_presence(pipe)
                case _Signal.ANNOUNCE:
                    args = [self.origin, int(self.presence_ttl * 1000), self.history_size, self._ttl_ms()]
                    self._eval(pipe, "ANNOUNCE", redis_scripts.fleet_keys(prefix), args)
            wanted = item not in (_Signal.PRESENCE, _Signal.REFRESH)  # several commands, results unused
            owners += [item if wanted else None] * (len(pipe) - queued)
        results = self._execute(client, pipe)
        return [(item, result) for item, result in zip(owners, results, strict=True) if item is not None]

    def _send_presence(self, pipe: Any, changes: dict[tuple[str, str, str], str | None]) -> None:
        additions: list[tuple[str, str, str, str]] = []
        for (namespace, topic, entry_id), info in changes.items():
            if info is None:
                keys = redis_scripts.presence_keys(self.prefix, topic)
                self._eval(pipe, "PRESENCE_REMOVE", keys, [redis_scripts.presence_member(namespace, entry_id)])
            else:
                additions.append((namespace, topic, entry_id, info))
        self._add_presence(pipe, additions)

    def _add_presence(
        self, pipe: Any, entries: list[tuple[str, str, str, str]], seen: dict[str, list[str]] | None = None
    ) -> None:
        """PRESENCE_ADD for ``entries``: about 500 entries per script call, of one hash slot on a cluster.

        Per entry it sends a member and its info; per topic two keys and a
        count.  (One call per topic cost 200,000 calls per refresh of 200,000
        topics: seconds of the relay thread's time, holding the GIL.)
        """
        grouped: dict[str, list[str]] = {}
        for namespace, topic, entry_id, info in entries:
            grouped.setdefault(topic, []).extend((f"{entry_id}\n{namespace}", info))  # presence_member
        cache = self._presence_keys
        for topic in grouped:
            if topic not in cache:
                cache[topic] = redis_scripts.presence_keys(self.prefix, topic)
            if seen is not None:
                seen[topic] = cache[topic]
        by_slot: dict[int, list[str]] = {}
        if self.target.topology is Topology.CLUSTER:
            from redis.crc import key_slot

            for topic in grouped:
                by_slot.setdefault(key_slot(cache[topic][0].encode()), []).append(topic)
        else:
            by_slot[0] = list(grouped)
        ttl = int(self.presence_ttl * 1000)
        for topics in by_slot.values():
            keys: list[str] = []
            args: list[Any] = [ttl]
            for topic in topics:
                flat = grouped[topic]
                keys += cache[topic]
                args.append(len(flat) // 2)
                args += flat
                if len(args) >= 1000:
                    self._eval(pipe, "PRESENCE_ADD", keys, args)
                    keys, args = [], [ttl]
            if keys:
                self._eval(pipe, "PRESENCE_ADD", keys, args)

    def _refresh_presence(self, pipe: Any) -> None:
        """Every local entry again; the names of the keys are kept for the topics still present only.

        Building the names for 200,000 topics cost the relay thread 0.2 s per
        refresh (holding the GIL), more than the rest of its work.
        """
        if self._presence_entries is None:
            return
        seen: dict[str, list[str]] = {}
        for entries in self._presence_entries():
            self._add_presence(pipe, entries, seen)
        self._presence_keys = seen

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

    def _give_up(self, batch: list[_Command]) -> None:
        """Redis did not take these: relays are dropped (counted), stored publishes delivered locally."""
        for item in batch:
            match item:
                case _Stored(namespace=namespace, topic=topic, outgoing=outgoing, exclude_id=exclude):
                    self._deliver_unstored(namespace, topic, outgoing, exclude)
                    self.dropped += 1
                case _Relay():
                    self.dropped += 1

    def _subscribe_loop(self) -> None:
        subscriber = _Subscriber(self)
        try:
            subscriber.run()
        finally:
            subscriber.close()

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
        self._outbox.put(_Relay(self._commands_channel, data))

    def _on_command(self, data: bytes) -> None:
        try:
            command = decode_command(data)
        except ValueError as exc:
            self._log.warning("syncws: dropped a malformed broker command: %s", exc)
            return
        handler = self.on_command
        if command["o"] != self.origin and handler is not None:
            handler(command)

    def _on_message(self, channel: str, data: bytes) -> None:
        """A message on a topic channel (subscriber thread): a publish, or a recovery's marker."""
        if data[:2] == _MARKER:
            sender, _, key = data[2:].partition(b":")
            if sender == self._origin_bytes:
                self._release(key.decode("ascii", "replace"))
            return  # another process's recovery
        try:
            origin, namespace, topic, outgoing, exclude, audience = decode_envelope(data)
        except ValueError as exc:
            self._log.warning("syncws: dropped a malformed relayed message: %s", exc)
            return
        if audience is not None and (audience == "h") != self.stores_history:
            return  # the copy for servers with (h) or without (p) history; this process takes the other
        if origin == self.origin and outgoing.offset is None:
            return  # our own relay, already delivered locally (stored publishes come back: see above)
        if outgoing.offset is not None and not self._advance(channel, outgoing):
            return  # delivered already, by a resync
        deliver = self._deliver
        if deliver is not None:
            deliver(namespace, topic, outgoing, exclude if origin == self.origin else None)

    def _advance(self, channel: str, outgoing: Outgoing) -> bool:
        """Note a stored publish as the channel's last; False when it is not newer than the last."""
        parsed = parse_offset(outgoing.offset)
        if parsed is None:
            return True
        last = self._last.get(channel)
        # A baseline (crc None: where the history stood when the channel was subscribed)
        # never drops anything: a publish stored before that read may arrive after it.
        if last is not None and last[2] is not None and last[0] == parsed[0] and parsed[1] <= last[1]:
            return False
        self._last[channel] = (parsed[0], parsed[1], zlib.crc32(outgoing.payload))
        return True

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

    def _read(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run a read script through the reader thread; wait at most ``read_timeout``.

        One thread owns the reading connection: a socket is only ever used by
        the thread that made it (with gevent's monkey-patching, a socket
        belongs to its thread's hub), and every concurrent read shares one
        pipelined round trip.  Raises :class:`BrokerError` (from the Redis
        error, or for a timeout): redis-py's errors stop here, at the boundary.
        """
        if not self._running:
            raise BrokerError("the broker is not running")
        reply: Reply[Any] = Reply()
        self._reads.put((name, keys, args, reply))
        try:
            return reply.wait(self.read_timeout + 1)
        except TimeoutError:
            raise BrokerError("Redis did not answer in time") from None
        except self._errors as exc:
            raise BrokerError(f"Redis could not be read: {_explain(exc)}") from exc

    def _read_loop(self) -> None:
        client = None
        while True:
            batch = _batch(self._reads, self._reads.get())
            if batch is None:
                break
            if client is None:
                try:
                    client = self._client(socket_timeout=self.read_timeout)
                except self._errors as exc:  # a cluster that cannot be reached
                    results: list[Outcome[Any]] = [Raised(exc)] * len(batch)
                else:
                    results = self._run_reads(client, batch)
            else:
                results = self._run_reads(client, batch)
            if (
                client is not None
                and self.target.topology is Topology.CLUSTER
                and any(isinstance(r, Raised) and _is_connection_error(self._redis_module, r.error) for r in results)
            ):
                client.close()  # a failover: find the cluster's nodes again
                client = None
            for (_, _, _, reply), result in zip(batch, results, strict=True):
                reply.set(result)
        if client is not None:
            client.close()

    def _run_reads(self, client: Any, batch: list[Any]) -> list[Outcome[Any]]:
        """One pipelined round trip for the batch; the outcome of each read.

        An error that is not the connection's (an argument redis-py cannot
        encode fails the whole pipeline before anything is sent) is one
        caller's: each read is then run on its own, so a bad one fails alone.
        """
        redis = self._redis_module
        try:
            pipe = client.pipeline(transaction=False)
            publish = "SPUBLISH" if self._is_sharded(client) else "PUBLISH"
            for name, keys, args, _ in batch:
                self._eval(pipe, name, keys, [publish if arg is _PUBLISH_COMMAND else arg for arg in args])
            return [Raised(r) if isinstance(r, Exception) else Returned(r) for r in self._execute(client, pipe)]
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.RedisClusterException, OSError) as exc:
            return [Raised(exc)] * len(batch)
        except redis.RedisError as exc:
            if len(batch) == 1:
                return [Raised(exc)]
            return [self._run_reads(client, [read])[0] for read in batch]

    def read_history(
        self, namespace: str, topic: str, since: str | None, limit: int | None, *, recovering: bool = False
    ) -> tuple[list[Outgoing], bool, str | None] | None:
        deadline = time.monotonic() + self.read_timeout
        channel = channel_name(self.prefix, namespace, topic)
        marker = ""
        if recovering:
            if self._outage:
                return None  # known to be down: answer at once rather than wait for the timeout
            # Live delivery must be on before the read: wait until Redis confirms
            # the subscription the new local subscriber caused.
            if not self._wait(channel, lambda: channel in self._confirmed, deadline):
                return None
            marker = uuid.uuid4().hex
            arrived = RealLock()
            arrived.acquire()
            after = self._after_deliveries
            with self._lock:
                # The marker comes back on the topic's channel after every publish
                # stored before the read; then the server makes the deliveries
                # handed over before it, and only then does this return.
                self._waiters[marker] = [lambda: after(arrived.release) if after else arrived.release()]
        keys = [redis_scripts.history_key(self.prefix, namespace, topic), redis_scripts.spaces_key(self.prefix, topic)]
        args = [namespace, since or "", self._ttl_ms(), -1 if recovering and since is None else (limit or 0)]
        args += ["1" if recovering else "0", _PUBLISH_COMMAND, channel if marker else ""]
        args += [f"m:{self.origin}:{marker}" if marker else "", "0"]
        try:
            recovered, newest, entries, _ = self._read("READ", keys, args)
        except self._errors as exc:
            self._log.warning("syncws: reading a history from Redis failed: %s", _explain(exc))
            with self._lock:
                self._waiters.pop(marker, None)
            return None
        if marker and not arrived.acquire(timeout=max(0.0, deadline - time.monotonic())):
            with self._lock:
                self._waiters.pop(marker, None)
            return None
        return [_from_entry(topic, entry) for entry in entries], bool(recovered), _text(newest) or None

    def read_presence(self, topic: str, namespace: str | None, count_only: bool = False) -> Presence:
        keys = redis_scripts.presence_keys(self.prefix, topic)
        found = self._read("PRESENCE_READ", keys, ["1" if count_only else "0", namespace or ""])
        if count_only:
            return int(found)
        return [{"id": _text(found[i]), "info": json.loads(found[i + 1])} for i in range(0, len(found), 2)]


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


#: Replaced by the reader thread with PUBLISH or SPUBLISH (it knows which, having asked Redis).
_PUBLISH_COMMAND: Any = object()


def _sha(name: str) -> str:
    """The SHA1 Redis knows script ``name`` by."""
    return _SHAS.setdefault(name, hashlib.sha1(getattr(redis_scripts, name).encode("utf-8")).hexdigest())


_SHAS: dict[str, str] = {}


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _explain(error: BaseException) -> str:
    """The error's text, with what to do when it says the URL names the wrong kind of Redis."""
    text = str(error)
    if text.startswith("MOVED"):
        return f"{text} (this Redis is a node of a Redis Cluster: use a redis+cluster:// URL)"
    return text


def _is_connection_error(redis: Any, error: BaseException) -> bool:
    return isinstance(error, (redis.ConnectionError, redis.TimeoutError, OSError)) or str(error).startswith(
        ("MOVED", "CLUSTERDOWN", "TRYAGAIN")
    )


class _Link:
    """One subscribing connection: to the whole Redis, or to one shard of a cluster (subscriber thread only)."""

    def __init__(self, name: str, pubsub: Any, sharded: bool) -> None:
        self.name = name
        self.pubsub = pubsub
        self.sharded = sharded
        self.channels: set[str] = set()  # subscribed, or asked to be
        self.leaving: dict[str, int] = {}  # channel -> unsubscribes asked for and not yet confirmed
        self.last_heard = time.monotonic()
        self.pinged = False

    def subscribe(self, channels: set[str]) -> None:
        if self.sharded:  # one SSUBSCRIBE names channels of one slot only
            for channel in sorted(channels):
                self.pubsub.ssubscribe(channel)
        else:
            self.pubsub.subscribe(*sorted(channels))
        self.channels |= channels

    def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        self.leaving[channel] = self.leaving.get(channel, 0) + 1
        (self.pubsub.sunsubscribe if self.sharded else self.pubsub.unsubscribe)(channel)

    def fileno(self) -> int:
        connection = self.pubsub.connection
        sock = None if connection is None else connection._sock
        if sock is None:
            raise ConnectionError("the subscriber connection is closed")
        return int(sock.fileno())

    def close(self) -> None:
        try:
            self.pubsub.close()
        except Exception:
            pass


class _Subscriber:
    """The subscriber thread's work: where each channel is subscribed, and what a lost connection resyncs.

    With sharded pub/sub a channel lives on the shard of its hash slot, so
    there is one connection per shard the process needs; otherwise one.  A
    connection that fails puts its channels back to be placed again (after a
    backoff, and on a cluster after asking it where the slots are now); the
    others go on.  A channel that Redis unsubscribes by itself (its slot moved
    to another shard) is placed again at once.
    """

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker
        self.errors = broker._errors
        self.links: dict[str, _Link] = {}
        self.homeless: set[str] = set()  # channels wanted and on no connection
        self.router: Any = None  # a cluster client that knows the slots (cluster only)
        self.reader: Any = None  # the client of resync reads
        self.refresh = False  # ask the cluster where the slots are before placing
        self.retry_at = 0.0
        self.backoff = 0.1
        self.down = False  # a connection was lost and its channels are not all placed again
        self.holding: dict[str, list[bytes]] = {}  # channel -> messages held until its resync is done
        # A timeout on every socket operation, so a connection that Redis accepts
        # but never answers cannot hang the handshake; idle reads have their own.
        self.timeout = min(5.0, max(1.0, 2 * broker.health_check_interval))

    def run(self) -> None:
        broker = self.broker
        with broker._lock:  # the whole current set, and the commands
            broker._commands.clear()
            self.homeless = set(broker._channels) | {broker._commands_channel}
        while broker._running:
            self._apply_commands()
            if self.homeless and time.monotonic() >= self.retry_at:
                self._place()
            self._poll()
            broker.connected = not self.homeless and bool(self.links)

    def close(self) -> None:
        self.broker.connected = False
        for link in self.links.values():
            link.close()
        for client in (self.router, self.reader):
            if client is not None:
                try:
                    client.close()
                except Exception:
                    pass

    # -- placing channels on connections --------------------------------------------
    def _apply_commands(self) -> None:
        commands = self.broker._commands
        while commands:
            present, channel = commands.popleft()
            link = next((link for link in self.links.values() if channel in link.channels), None)
            if present:
                if link is None:
                    self.homeless.add(channel)
                continue
            self.homeless.discard(channel)
            self.broker._last.pop(channel, None)
            self.holding.pop(channel, None)
            if link is not None:
                try:
                    link.unsubscribe(channel)
                except self.errors as exc:
                    self._lost(link, exc)

    def _place(self) -> None:
        broker = self.broker
        try:
            groups: dict[str, set[str]] = {}
            for channel in self.homeless:
                groups.setdefault(self._home(channel), set()).add(channel)
            for name, channels in groups.items():
                link = self.links.get(name)
                if link is None:
                    link = self.links[name] = self._connect(name)
                link.subscribe(channels)
                self.homeless -= channels
        except self.errors as exc:
            self._failed(exc)
            return
        if self.down:
            self.down = False
            broker._outage = False
            broker.reconnects += 1
            broker._log.info("syncws: Redis broker subscriber reconnected")
        self.backoff = 0.1

    def _home(self, channel: str) -> str:
        """The name of the connection ``channel`` belongs on: a shard's address, or "main"."""
        broker = self.broker
        if broker.target.topology is not Topology.CLUSTER:
            return "main"
        if self.router is None:
            self.router = broker._client(socket_timeout=self.timeout)
            self.refresh = False
        elif self.refresh:
            self.router.nodes_manager.initialize()
            self.refresh = False
        if not broker._is_sharded(self.router):
            return "main"
        node = self.router.nodes_manager.get_node_from_slot(self.router.keyslot(channel))
        return f"{node.host}:{node.port}"

    def _connect(self, name: str) -> _Link:
        broker = self.broker
        options = {"socket_timeout": self.timeout, "socket_connect_timeout": 2, "socket_keepalive": True}
        if broker.target.topology is not Topology.CLUSTER:
            return _Link(name, broker._client(socket_timeout=self.timeout).pubsub(), False)
        if name == "main":  # classic pub/sub on a cluster: any primary hears every channel
            node = random.choice(self.router.get_primaries())
            return _Link(name, broker.target.node_client(node.host, node.port, **options).pubsub(), False)
        host, _, port = name.rpartition(":")
        return _Link(name, broker.target.node_client(host, int(port), **options).pubsub(), True)

    def _lost(self, link: _Link, error: BaseException) -> None:
        """A connection failed: its channels wait to be placed again, wherever they live now."""
        link.close()
        self.links.pop(link.name, None)
        with self.broker._lock:
            self.broker._confirmed.difference_update(link.channels)
            wanted = link.channels & (set(self.broker._channels) | {self.broker._commands_channel})
        self.homeless |= wanted
        for channel in link.channels:
            self.holding.pop(channel, None)
        self._failed(error)

    def _failed(self, error: BaseException) -> None:
        broker = self.broker
        broker._outage = True
        self.refresh = True
        if not self.down:
            self.down = True
            broker._report(error, "subscriber")
        self.retry_at = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, broker.max_backoff)

    # -- reading -------------------------------------------------------------------
    def _poll(self) -> None:
        """Read what every connection has, then wait (at most 50 ms) for more."""
        broker = self.broker
        if not self.links:
            if broker._stopped.acquire(timeout=max(0.0, min(0.05, self.retry_at - time.monotonic()))):
                broker._stopped.release()  # stop() was called
            return
        for link in list(self.links.values()):
            self._drain(link)
        if self.holding:
            self._resync()
        links = list(self.links.values())
        if not links or broker._commands:
            return
        try:
            _select(links, [], [], 0.05)
        except (OSError, ValueError) as exc:  # a socket closed under us: its drain says which
            for link in links:
                try:
                    link.fileno()
                except OSError:
                    self._lost(link, exc)

    def _drain(self, link: _Link) -> None:
        broker = self.broker
        interval = broker.health_check_interval
        try:
            while True:
                message = link.pubsub.get_message(timeout=0)
                now = time.monotonic()
                if message is None:
                    if now - link.last_heard > 2 * interval:
                        raise ConnectionError("Redis did not answer the health check")
                    if now - link.last_heard > interval and not link.pinged:
                        link.pubsub.ping("syncws-health")
                        link.pinged = True
                    return
                link.last_heard, link.pinged = now, False
                self._handle(link, message)
        except self.errors as exc:
            self._lost(link, exc)

    def _handle(self, link: _Link, message: dict[str, Any]) -> None:
        broker = self.broker
        kind = message.get("type")
        if kind in ("message", "smessage"):
            channel = _text(message["channel"])
            held = self.holding.get(channel)
            if held is not None:
                held.append(message["data"])
            elif channel == broker._commands_channel:
                broker._on_command(message["data"])
            else:
                broker._on_message(channel, message["data"])
        elif kind in ("subscribe", "ssubscribe"):
            channel = _text(message["channel"])
            meta = broker._channels.get(channel)
            if broker.stores_history and meta is not None and meta[0] is not None:
                self.holding[channel] = []  # live messages wait until what was missed is delivered
            else:
                self._confirm(channel)
        elif kind in ("unsubscribe", "sunsubscribe"):
            channel = _text(message["channel"])
            asked = link.leaving.get(channel, 0)
            if asked:  # the answer to our own unsubscribe (the channel may be wanted again already)
                if asked == 1:
                    del link.leaving[channel]
                else:
                    link.leaving[channel] = asked - 1
                return
            with broker._lock:
                broker._confirmed.discard(channel)
            if channel in link.channels:  # not asked for: its slot moved to another shard
                link.channels.discard(channel)
                self.holding.pop(channel, None)
                self.homeless.add(channel)
                self.refresh = True

    def _confirm(self, channel: str) -> None:
        broker = self.broker
        with broker._lock:
            broker._confirmed.add(channel)
        broker._release(channel)

    # -- resync --------------------------------------------------------------------
    def _resync(self) -> None:
        """Deliver what the held channels missed while not subscribed, then what they held.

        A channel seen for the first time only learns where its history is
        (its newest offset), so that a later lost connection can be bridged.
        """
        broker = self.broker
        holding, self.holding = self.holding, {}
        work = []
        for channel in holding:
            meta = broker._channels.get(channel)
            if meta is None or meta[0] is None:
                continue
            last = broker._last.get(channel)
            work.append((channel, meta[0], meta[1], last))
        results: list[Any] = self._read_since(work) if work else []
        for (channel, namespace, topic, last), result in zip(work, results, strict=True):
            self._bridge(channel, namespace, topic, last, result)
        for channel, held in holding.items():
            self._confirm(channel)
            for data in held:
                broker._on_message(channel, data)

    def _read_since(self, work: list[tuple[str, str, str, Any]]) -> list[Any]:
        """One pipelined READ per channel, from its last delivery; a result or an error each.

        Tried twice: the reading connection may have died with the outage
        this resync follows, unnoticed until now, and one failed try would
        otherwise send every subscriber of these topics to resume.
        """
        broker = self.broker
        error: BaseException | None = None
        for _ in range(2):
            try:
                if self.reader is None:
                    self.reader = broker._client(socket_timeout=broker.read_timeout)
                pipe = self.reader.pipeline(transaction=False)
                publish = "SPUBLISH" if broker._is_sharded(self.reader) else "PUBLISH"
                for _, namespace, topic, last in work:
                    keys = [
                        redis_scripts.history_key(broker.prefix, namespace, topic),
                        redis_scripts.spaces_key(broker.prefix, topic),
                    ]
                    since = "" if last is None else f"{last[0]}-{last[1]}"
                    args = [namespace, since, broker._ttl_ms(), 0 if last else -1, "0", publish, "", "", "1"]
                    broker._eval(pipe, "READ", keys, args)
                return broker._execute(self.reader, pipe)
            except self.errors as exc:
                error = exc
                if self.reader is not None:
                    self.reader.close()
                    self.reader = None
        return [error] * len(work)

    def _bridge(
        self,
        channel: str,
        namespace: str,
        topic: str,
        last: tuple[int, int, int | None] | None,
        result: list[Any] | Exception,
    ) -> None:
        broker = self.broker
        if isinstance(result, Exception):
            if last is not None:
                self._gap(channel, namespace, topic, f"its history could not be read: {_explain(result)}")
            return
        recovered, newest, entries, at_since = result
        current = parse_offset(_text(newest))
        if last is None:  # first subscribed: where its history stands
            if current is not None:
                broker._last.setdefault(channel, (current[0], current[1], None))
            return
        epoch, seq, crc = last
        if current is None:  # the history is gone (a failover to a replica that never had it, say)
            self._gap(channel, namespace, topic, "its history is gone")
            return
        if current[0] != epoch:
            self._gap(channel, namespace, topic, "its history started again")
            return
        fields = dict(zip(at_since[1][::2], at_since[1][1::2], strict=True)) if at_since else None
        if (fields is None and current[1] < seq) or (
            fields is not None and crc is not None and zlib.crc32(fields.get(b"d", b"")) != crc
        ):
            # Publishes this process delivered are not in Redis (a failover to a replica that
            # had not received them): their offsets must never resume, so a new epoch starts.
            self._bump(namespace, topic, epoch)
            self._gap(channel, namespace, topic, "Redis lost publishes that had been delivered (a failover)")
            return
        if not recovered:
            self._gap(channel, namespace, topic, "its history no longer holds everything missed")
            return
        deliver = broker._deliver
        for entry in entries:
            outgoing = _from_entry(topic, entry)
            if broker._advance(channel, outgoing) and deliver is not None:
                broker.resynced += 1
                deliver(namespace, topic, outgoing, None)

    def _bump(self, namespace: str, topic: str, epoch: int) -> None:
        broker = self.broker
        try:
            pipe = self.reader.pipeline(transaction=False)
            keys = [redis_scripts.history_key(broker.prefix, namespace, topic)]
            broker._eval(pipe, "BUMP", keys, [str(epoch), random.randint(1, 1 << 20)])
            (result,) = broker._execute(self.reader, pipe)
            if isinstance(result, Exception):
                raise result
        except self.errors as exc:
            broker._log.warning("syncws: could not start a new epoch for %r: %s", topic, _explain(exc))

    def _gap(self, channel: str, namespace: str, topic: str, why: str) -> None:
        broker = self.broker
        broker.gaps += 1
        broker._last.pop(channel, None)
        broker._log.warning(
            "syncws: subscribers of %r in %r may have missed publishes while Redis was away (%s): "
            "they are asked to reconnect and resume, which tells them recovered=False",
            topic,
            namespace,
            why,
        )
        on_gap = broker.on_gap
        if on_gap is not None:
            on_gap(namespace, topic)
