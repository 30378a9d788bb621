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
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice

from ..protocol.payload import Outgoing

#: Expired histories forgotten per publish at most (they are found in O(1) each).
_SWEEP_SLICE = 100


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
    """One stored publish: the message as every replay sends it, and when it was stored."""

    __slots__ = ("outgoing", "stored_at")

    def __init__(self, stored_at: float, outgoing: Outgoing) -> None:
        self.stored_at = stored_at
        self.outgoing = outgoing


class _TopicHistory:
    __slots__ = ("entries", "epoch", "last", "touched")

    def __init__(self, size: int) -> None:
        self.epoch = new_epoch()
        self.last = 0  # seq of the newest publish ever stored; 0: none yet
        # Consecutive seqs: entries[i] is publish last - len(entries) + 1 + i.
        self.entries: deque[_Entry] = deque(maxlen=size)
        self.touched = 0.0


class MemoryHistory:
    """The newest ``size`` publishes of each (namespace, topic), kept in this process.

    Memory per stored publish: its payload plus about 150 bytes (measured in
    docs/delivery.md); a publish that has been replayed also keeps the
    frames built for it (about its size again per wire form), so the next
    replay does not build or compress them again.  With ``ttl`` set,
    publishes older than ``ttl`` are dropped, and a topic whose publishes
    all expired is forgotten entirely (its epoch too: an offset from before
    reports ``recovered=False``).

    At most ``max_topics`` histories are kept: a new one past that forgets
    the one published to least recently (histories are kept in that
    order, so finding it costs nothing), because topic names may come from
    clients.  Expired histories are forgotten from the same end, at most
    ``_SWEEP_SLICE`` per publish, so no sweep walks them all at once.
    """

    def __init__(
        self,
        size: int,
        ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_topics: int | None = None,
    ) -> None:
        self.size = size
        self.ttl = ttl
        self.max_topics = max_topics
        self._clock = clock
        # Least recently published first: the end that expires and is evicted.
        self._histories: OrderedDict[tuple[str, str], _TopicHistory] = OrderedDict()
        self._namespaces: dict[str, set[str]] = {}  # topic -> namespaces with a history of it
        self._entries = 0  # stored publishes in every history: counted, never summed
        self.evicted = 0  # histories forgotten because there were max_topics

    # -- writing ---------------------------------------------------------------------
    def append(self, namespace: str, topic: str, outgoing: Outgoing) -> Outgoing:
        """Store a publish; return the copy stamped with its offset, for delivery."""
        now = self._clock()
        if self.ttl is not None:
            self._sweep(now)
        key = (namespace, topic)
        history = self._histories.get(key)
        if history is None:
            if self.max_topics is not None and len(self._histories) >= self.max_topics:
                self._forget(next(iter(self._histories)))
                self.evicted += 1
            history = self._histories[key] = _TopicHistory(self.size)
            self._namespaces.setdefault(topic, set()).add(namespace)
        else:
            self._histories.move_to_end(key)
        history.last += 1
        history.touched = now
        offset = format_offset(history.epoch, history.last)
        # Its own copy, not the live one: the frames a live fan-out builds are
        # not kept for as long as the history keeps the publish.
        stored = Outgoing.from_payload(outgoing.opcode, outgoing.payload, outgoing.compress, is_json=outgoing.is_json)
        stored.topic, stored.offset = topic, offset
        entries = history.entries
        if len(entries) < self.size:
            self._entries += 1
        entries.append(_Entry(now, stored))
        return outgoing.stamped(topic, offset)

    def namespaces(self, topic: str) -> frozenset[str]:
        """The namespaces that hold a history of ``topic``."""
        return frozenset(self._namespaces.get(topic, ()))

    # -- reading ---------------------------------------------------------------------
    def read(
        self, namespace: str, topic: str, since: str | None = None, limit: int | None = None
    ) -> tuple[list[Outgoing], bool, str | None]:
        """``(publishes after since, recovered, newest offset)``.

        Without ``since`` every stored publish is returned and ``recovered``
        is False.  ``limit`` keeps the newest.  The publishes are the stored
        objects themselves, shared by every reader (treat them as read-only):
        a replay to many subscribers frames and compresses each once.  Costs
        the number returned, not the number stored.
        """
        history = self._histories.get((namespace, topic))
        if history is None:
            return [], False, None
        self._expire(history, self._clock())
        entries = history.entries
        first = history.last - len(entries) + 1  # seq of entries[0]
        take = len(entries)
        mark = parse_offset(since) if since is not None else None
        recovered = False
        if mark is not None and mark[0] == history.epoch and mark[1] <= history.last:
            recovered = first <= mark[1] + 1  # nothing between since and the oldest kept was dropped
            if recovered:
                take = history.last - mark[1]
        if limit is not None:
            take = min(take, limit)
        found = [entry.outgoing for entry in islice(reversed(entries), take)]
        found.reverse()
        return found, recovered, format_offset(history.epoch, history.last) if history.last else None

    # -- expiry ----------------------------------------------------------------------
    def _expire(self, history: _TopicHistory, now: float) -> None:
        if self.ttl is None:
            return
        entries, oldest = history.entries, now - self.ttl
        while entries and entries[0].stored_at < oldest:
            entries.popleft()
            self._entries -= 1

    def _sweep(self, now: float) -> None:
        """Forget histories whose newest publish expired (ttl set), oldest first, a slice at a time."""
        assert self.ttl is not None
        histories, oldest = self._histories, now - self.ttl
        for _ in range(_SWEEP_SLICE):
            if not histories:
                return
            key = next(iter(histories))
            if histories[key].touched >= oldest:
                return
            self._forget(key)

    def _forget(self, key: tuple[str, str]) -> None:
        history = self._histories.pop(key)
        self._entries -= len(history.entries)
        namespace, topic = key
        spaces = self._namespaces[topic]
        spaces.discard(namespace)
        if not spaces:
            del self._namespaces[topic]

    def counts(self) -> dict[str, int]:
        return {"histories": len(self._histories), "entries": self._entries}
