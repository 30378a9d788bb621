"""Per-topic history with offsets: what a reconnecting client recovers from.

An *offset* names one stored publish: ``"<epoch>-<seq>"``.  ``seq`` counts
the publishes of one (namespace, topic) history, one by one; ``epoch`` is a
random number chosen when that history is created, so an offset from a
history that was lost (a restarted in-memory server, a deleted Redis
stream) or from another topic is recognised as foreign instead of being
misread as a position in this one.  Clients treat offsets as opaque strings.

Recovery from ``since`` is exact when ``since`` belongs to this history and
every publish after it is still stored: the publishes after ``since`` are
replayed and ``recovered`` is True.  Otherwise whatever is still stored is
replayed and ``recovered`` is False, which tells the app that something may
be missing (a client then reloads its state).

:class:`MemoryHistory` is the store of a server without a shared broker; it
is used from the server's hub only, so it takes no lock.  The Redis broker
keeps the same offsets in Redis Streams (:mod:`syncws.pubsub.redis_broker`).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..protocol.payload import Outgoing

#: How often (seconds) a history with an age limit looks for topics whose every entry expired.
_SWEEP_EVERY = 10.0


@dataclass(frozen=True)
class Recovery:
    """The result of a subscribe: what was replayed and where live delivery starts.

    ``recovered``: every publish after ``since`` was replayed (False when
    there was no ``since``, history is off, or publishes after it are no
    longer all stored).  ``replayed``: how many stored publishes were sent
    before live delivery began.  ``offset``: the last replayed publish's
    offset, else the newest one stored, None when this history never stored
    anything (or is off).
    """

    recovered: bool = False
    replayed: int = 0
    offset: str | None = None


NOT_RECOVERED = Recovery()


def new_epoch() -> int:
    """A random positive 47-bit number (valid as the time part of a Redis stream id)."""
    return random.getrandbits(47) + 1


def format_offset(epoch: int, seq: int) -> str:
    return f"{epoch}-{seq}"


def parse_offset(offset: object) -> tuple[int, int] | None:
    """``(epoch, seq)``, or None for anything that is not an offset (a stale or forged id)."""
    if not isinstance(offset, str) or len(offset) > 64:
        return None
    epoch, sep, seq = offset.partition("-")
    if not sep or not epoch.isdigit() or not seq.isdigit() or not epoch.isascii() or not seq.isascii():
        return None
    return int(epoch), int(seq)


def check_since(since: object) -> str | None:
    """``since`` as a subscribe or a history read takes it: an offset, or None to recover nothing.

    Anything but a string or None raises :class:`TypeError` (an app passing a
    client's JSON straight through, say).  A string that is not an offset
    (too long, the wrong shape: a forged or garbled ``Last-Event-ID``) names
    no position in any history, so it recovers nothing: it becomes None, and
    the subscriber gets live publishes only and ``recovered=False``.  Checked
    at the API's edge, so a bad value never reaches a store (a Redis read is
    pipelined with other subscribers' reads).
    """
    if since is None:
        return None
    if not isinstance(since, str):
        raise TypeError(f"since must be an offset (a str) or None, not {type(since).__name__}")
    return since if parse_offset(since) is not None else None


def is_after(offset: str | None, mark: tuple[int, int] | None) -> bool:
    """Whether a delivered publish comes after ``mark`` in the same history.

    Unstamped publishes (no offset) and publishes from another epoch (a
    history recreated since) count as after: they were not part of a replay.
    """
    if mark is None:
        return True
    parsed = parse_offset(offset)
    return parsed is None or parsed[0] != mark[0] or parsed[1] > mark[1]


class _Entry:
    __slots__ = ("is_json", "opcode", "payload", "seq", "stored_at")

    def __init__(self, seq: int, stored_at: float, outgoing: Outgoing) -> None:
        self.seq = seq
        self.stored_at = stored_at
        self.opcode = outgoing.opcode
        self.payload = outgoing.payload
        self.is_json = outgoing.is_json


class _TopicHistory:
    __slots__ = ("entries", "epoch", "last", "touched")

    def __init__(self, size: int) -> None:
        self.epoch = new_epoch()
        self.last = 0  # seq of the newest publish ever stored; 0: none yet
        self.entries: deque[_Entry] = deque(maxlen=size)
        self.touched = 0.0


class MemoryHistory:
    """The newest ``size`` publishes of each (namespace, topic), kept in this process.

    Memory per stored publish: its payload plus about 150 bytes (measured in
    docs/delivery.md).  With ``ttl`` set, publishes older than ``ttl`` are
    dropped, and a topic whose publishes all expired is forgotten entirely
    (its epoch too: an offset from before reports ``recovered=False``).
    """

    def __init__(self, size: int, ttl: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.ttl = ttl
        self._clock = clock
        self._histories: dict[tuple[str, str], _TopicHistory] = {}
        self._namespaces: dict[str, set[str]] = {}  # topic -> namespaces with a history of it
        self._swept = clock()

    # -- writing ---------------------------------------------------------------------
    def append(self, namespace: str, topic: str, outgoing: Outgoing) -> Outgoing:
        """Store a publish; return the copy stamped with its offset, for delivery."""
        now = self._clock()
        if self.ttl is not None and now - self._swept > max(self.ttl, _SWEEP_EVERY):
            self._sweep(now)
        key = (namespace, topic)
        history = self._histories.get(key)
        if history is None:
            history = self._histories[key] = _TopicHistory(self.size)
            self._namespaces.setdefault(topic, set()).add(namespace)
        history.last += 1
        history.touched = now
        history.entries.append(_Entry(history.last, now, outgoing))
        return outgoing.stamped(topic, format_offset(history.epoch, history.last))

    def namespaces(self, topic: str) -> frozenset[str]:
        """The namespaces that hold a history of ``topic``."""
        return frozenset(self._namespaces.get(topic, ()))

    # -- reading ---------------------------------------------------------------------
    def read(
        self, namespace: str, topic: str, since: str | None = None, limit: int | None = None
    ) -> tuple[list[Outgoing], bool, str | None]:
        """``(publishes after since, recovered, newest offset)``.

        Without ``since`` every stored publish is returned and ``recovered``
        is False.  ``limit`` keeps the newest.
        """
        history = self._histories.get((namespace, topic))
        if history is None:
            return [], False, None
        self._expire(history, self._clock())
        entries = list(history.entries)
        mark = parse_offset(since) if since is not None else None
        recovered = False
        if mark is not None and mark[0] == history.epoch and mark[1] <= history.last:
            first = entries[0].seq if entries else history.last + 1
            recovered = first <= mark[1] + 1  # nothing between since and the oldest kept was dropped
            if recovered:
                entries = [entry for entry in entries if entry.seq > mark[1]]
        if limit is not None:
            entries = entries[-limit:] if limit else []
        stamped = [self._stamp(history, topic, entry) for entry in entries]
        return stamped, recovered, format_offset(history.epoch, history.last) if history.last else None

    @staticmethod
    def _stamp(history: _TopicHistory, topic: str, entry: _Entry) -> Outgoing:
        outgoing = Outgoing.from_payload(entry.opcode, entry.payload, is_json=entry.is_json)
        outgoing.topic, outgoing.offset = topic, format_offset(history.epoch, entry.seq)
        return outgoing

    # -- expiry ----------------------------------------------------------------------
    def _expire(self, history: _TopicHistory, now: float) -> None:
        if self.ttl is None:
            return
        entries, oldest = history.entries, now - self.ttl
        while entries and entries[0].stored_at < oldest:
            entries.popleft()

    def _sweep(self, now: float) -> None:
        """Forget histories whose newest publish expired (ttl set): topics are not kept forever."""
        self._swept = now
        assert self.ttl is not None
        for key in [key for key, h in self._histories.items() if now - h.touched > self.ttl]:
            del self._histories[key]
            namespace, topic = key
            spaces = self._namespaces[topic]
            spaces.discard(namespace)
            if not spaces:
                del self._namespaces[topic]

    def counts(self) -> dict[str, int]:
        return {"histories": len(self._histories), "entries": sum(len(h.entries) for h in self._histories.values())}
