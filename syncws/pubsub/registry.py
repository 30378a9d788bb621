"""The in-memory registry of peers and topic subscriptions.

One registry per server.  It is read from hooks (hub thread) and from
``server.publish`` in any OS thread, so every access takes a real lock; the
lock is held only for dictionary work, never for I/O, and callers get
snapshots they can iterate without it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, NamedTuple, Protocol

from ..base.errors import ConfigurationError
from ..base.threads import RealLock
from ..protocol.payload import Outgoing, to_json


class Subscriber(Protocol):
    """Anything that can receive a publish: a WebSocket peer, an SSE stream."""

    namespace: str

    @property
    def id(self) -> str: ...

    def deliver(self, outgoing: Outgoing) -> None: ...


#: ``subscribe(..., presence=ABSENT)``: the subscription is not shown in presence.
class Absent(enum.Enum):
    ABSENT = "absent"


ABSENT: Final = Absent.ABSENT


class PresenceInfo(NamedTuple):
    """A presence entry's info and its JSON text, made once (the broker sends the text)."""

    info: Any
    text: str


#: Told when a presence entry appears (its info as JSON text) or goes (``ABSENT``):
#: ``(namespace, topic, id, info)``; runs under the registry's lock.
PresenceListener = Callable[[str, str, str, "str | None"], None]


class Registry:
    def __init__(self) -> None:
        self._lock = RealLock()
        self._peers: dict[str, set[Any]] = {}
        # (namespace, topic) -> {subscriber: enveloped?}: fan-out resolves the envelope once per
        # publish from these flags, never once per recipient
        self._topics: dict[tuple[str, str], dict[Any, bool]] = {}
        self._users: dict[str, set[Any]] = {}  # user id -> its identified peers (Peer.identify)
        self._subscriptions: dict[Any, set[str]] = {}
        # topic -> namespaces that have subscribers to it, for namespace-less publishes
        self._namespaces: dict[str, set[str]] = {}
        # (namespace, topic) -> {subscriber: (info, its JSON text)} for the subscriptions
        # shown in presence; the text is made once, for the broker's refreshes
        self._present: dict[tuple[str, str], dict[Any, PresenceInfo]] = {}
        self._present_count = 0  # entries in _present: counted, so stats and metrics never walk them
        #: Told when a presence entry appears or goes (the Redis broker mirrors them).
        self.on_presence: PresenceListener | None = None
        #: Told when (namespace, topic) gets its first local subscriber or loses
        #: its last one (namespace None: the topic in any namespace).  Runs
        #: under the lock, so it must only record (a broker queues a command).
        self.on_interest: Callable[[str | None, str, bool], None] | None = None

    def _interest(self, namespace: str | None, topic: str, present: bool) -> None:
        if self.on_interest is not None:
            self.on_interest(namespace, topic, present)

    # -- peers -------------------------------------------------------------
    def add_peer(self, peer: Subscriber) -> None:
        with self._lock:
            self._peers.setdefault(peer.namespace, set()).add(peer)

    def identify(self, sub: Subscriber, old: str | None, new: str | None) -> None:
        """Index ``sub`` under user ``new`` instead of ``old`` (None: no user)."""
        with self._lock:
            if old is not None:
                self._drop_user(sub, old)
            if new is not None:
                self._users.setdefault(new, set()).add(sub)

    def _drop_user(self, sub: Subscriber, user: str) -> None:
        peers = self._users.get(user)
        if peers is not None:
            peers.discard(sub)
            if not peers:
                del self._users[user]

    def peers_of(self, user: str) -> list[Any]:
        """The local peers identified as ``user`` (a snapshot)."""
        with self._lock:
            return list(self._users.get(user, ()))

    def remove(self, sub: Subscriber) -> None:
        """Forget a peer or stream entirely: namespace membership, user and topics."""
        with self._lock:
            user = getattr(sub, "user", None)
            if user is not None:
                self._drop_user(sub, user)
            members = self._peers.get(sub.namespace)
            if members is not None:
                members.discard(sub)
                if not members:
                    del self._peers[sub.namespace]
            for topic in self._subscriptions.pop(sub, ()):
                self._discard(sub, topic)

    def peers(self, namespace: str | None = None) -> frozenset[Any]:
        with self._lock:
            if namespace is not None:
                return frozenset(self._peers.get(namespace, ()))
            return frozenset(p for members in self._peers.values() for p in members)

    # -- topics ------------------------------------------------------------
    def subscribe(self, sub: Subscriber, topic: str, presence: object = ABSENT, envelope: bool = False) -> None:
        """Add ``sub`` to ``topic``; with ``presence`` (any JSON-able info) it is shown in presence.

        ``presence`` may be a :class:`PresenceInfo` the caller made (and checked) already.
        ``envelope``: this subscription receives publishes as their JSON envelope.
        """
        check_topic(topic)
        if presence is not ABSENT and not isinstance(presence, PresenceInfo):
            presence = PresenceInfo(presence, to_json(presence))
        with self._lock:
            if presence is not ABSENT:
                entries = self._present.setdefault((sub.namespace, topic), {})
                if sub not in entries:
                    self._present_count += 1
                entries[sub] = presence
                self._presence_changed(sub, topic, presence.text)
            key = (sub.namespace, topic)
            members = self._topics.get(key)
            if members is None:
                members = self._topics[key] = {}
                spaces = self._namespaces.get(topic)
                if spaces is None:
                    spaces = self._namespaces[topic] = set()
                    self._interest(None, topic, True)
                spaces.add(sub.namespace)
                self._interest(sub.namespace, topic, True)
            members[sub] = envelope
            self._subscriptions.setdefault(sub, set()).add(topic)

    def unsubscribe(self, sub: Subscriber, topic: str) -> None:
        with self._lock:
            topics = self._subscriptions.get(sub)
            if topics is None or topic not in topics:
                return
            topics.discard(topic)
            if not topics:
                del self._subscriptions[sub]
            self._discard(sub, topic)

    def _presence_changed(self, sub: Subscriber, topic: str, info: str | None) -> None:
        # info: the entry's JSON text, or None when it is gone.
        if self.on_presence is not None:
            self.on_presence(sub.namespace, topic, sub.id, info)

    def _discard(self, sub: Subscriber, topic: str) -> None:
        key = (sub.namespace, topic)
        present = self._present.get(key)
        if present is not None and sub in present:
            del present[sub]
            self._present_count -= 1
            if not present:
                del self._present[key]
            self._presence_changed(sub, topic, None)
        members = self._topics.get(key)
        if members is not None:
            members.pop(sub, None)
            if not members:
                del self._topics[key]
                self._interest(sub.namespace, topic, False)
                spaces = self._namespaces[topic]
                spaces.discard(sub.namespace)
                if not spaces:
                    del self._namespaces[topic]
                    self._interest(None, topic, False)

    def topics_of(self, sub: Subscriber) -> frozenset[str]:
        with self._lock:
            return frozenset(self._subscriptions.get(sub, ()))

    def subscribers(self, topic: str, namespace: str | None = None) -> list[Any]:
        """Snapshot of the subscribers of ``topic`` (in every namespace when None)."""
        return [sub for sub, _ in self.recipients(topic, namespace)]

    def recipients(self, topic: str, namespace: str | None = None) -> list[tuple[Any, bool]]:
        """Snapshot of ``(subscriber, enveloped)`` for ``topic`` (in every namespace when None), for :func:`fan_out`."""
        with self._lock:
            if namespace is not None:
                return list(self._topics.get((namespace, topic), {}).items())
            found: list[tuple[Any, bool]] = []
            for ns in self._namespaces.get(topic, ()):
                found.extend(self._topics[(ns, topic)].items())
            return found

    def namespaces_of(self, topic: str) -> frozenset[str]:
        """The namespaces with local subscribers of ``topic``."""
        with self._lock:
            return frozenset(self._namespaces.get(topic, ()))

    def presence(self, topic: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """``[{"id": ..., "info": ...}]`` of the local subscriptions shown in presence."""
        with self._lock:
            if namespace is not None:
                found = list(self._present.get((namespace, topic), {}).items())
            else:
                found = [
                    item
                    for ns in self._namespaces.get(topic, ())
                    for item in self._present.get((ns, topic), {}).items()
                ]
        return [{"id": sub.id, "info": info} for sub, (info, _) in found]

    def presence_count(self) -> int:
        """How many local presence entries there are, in O(1)."""
        return self._present_count

    def presence_slices(self, topics: int = 100) -> Iterator[list[tuple[str, str, str, str]]]:
        """Every local presence entry as ``(namespace, topic, id, info JSON)``, ``topics`` topics at a time.

        For a broker's heartbeat, from its own thread.  The lock is held for
        one slice at a time, never for the whole walk: with 200,000 entries
        one walk held it (and so every fan-out) for 0.4 s.  An entry added or
        removed meanwhile may be missed or seen; the broker's change
        messages cover those.
        """
        with self._lock:
            keys = list(self._present)
        for start in range(0, len(keys), topics):
            with self._lock:
                found = [
                    (ns, topic, sub.id, text)
                    for ns, topic in keys[start : start + topics]
                    for sub, (_, text) in self._present.get((ns, topic), {}).items()
                ]
            if found:
                yield found

    def interests(self) -> list[tuple[str | None, str]]:
        """Every (namespace, topic) with local subscribers, plus (None, topic) per topic."""
        with self._lock:
            return list(self._topics) + [(None, topic) for topic in self._namespaces]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "peers": sum(len(m) for m in self._peers.values()),
                "topics": len(self._topics),
                "subscribers": len(self._subscriptions),
            }


def check_topic(topic: object) -> None:
    if not isinstance(topic, str) or not topic:
        raise ConfigurationError("a topic is a non-empty string")


def check_user(user: object) -> str:
    """A user id as the registry keeps it: a non-empty string, or an integer as its string."""
    if isinstance(user, bool) or not isinstance(user, (str, int)) or user == "":
        raise ConfigurationError(f"a user id is a non-empty string or an integer, not {user!r}")
    return str(user)


def fan_out(
    recipients: Iterable[tuple[Subscriber, bool]], outgoing: Outgoing, exclude: Subscriber | None = None
) -> int:
    """Deliver one already-serialised message to ``(subscriber, enveloped)`` pairs; how many received it.

    The envelope is resolved at most once here, for every enveloped
    recipient: resolving it per recipient (a property, a memo lookup and a
    second call) cost enveloped subscribers 1.9x a raw one.
    """
    count = 0
    enveloped = None
    for sub, wrapped in recipients:
        if sub is exclude:
            continue
        if wrapped:
            if enveloped is None:
                enveloped = outgoing.envelope
            sub.deliver(enveloped)
        else:
            sub.deliver(outgoing)
        count += 1
    return count
