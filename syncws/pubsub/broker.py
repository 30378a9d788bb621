"""The broker interface, and the wire form of a relayed publish.

A server always has a broker.  The default, :class:`LocalBroker`, relays
nothing: pub/sub stays inside the process.  A real broker
(:class:`~syncws.redis_broker.RedisBroker`) carries publishes between
processes.  The rules every broker follows:

* a publish is delivered to local subscribers first, then relayed;
* a process delivers relayed messages to its own local subscribers only and
  never relays them again; it drops the ones it sent itself;
* the server tells the broker which (namespace, topic) pairs have local
  subscribers (``interest``), so a broker can route by interest.

A broker that keeps the topics' history itself (``stores_history``: the
Redis broker with ``history_size`` set) turns the first rule around: a
publish is stored first, because the offset comes from the store, and comes
back to its own process like to every other, so that every process delivers
the publishes of a topic in the order of their offsets.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

from ..protocol.frames import OP_BINARY, OP_TEXT
from ..protocol.payload import Outgoing

#: How a broker hands a relayed publish to its server: ``deliver(namespace,
#: topic, outgoing, exclude_id)``, from any thread; the server delivers it to
#: its local subscribers only, except the one whose id is ``exclude_id`` (the
#: peer that published, when the publish came back to its own process).
Deliver = Callable[[str | None, str, Outgoing, "str | None"], None]
#: Every (namespace, topic) with local subscribers, plus (None, topic) per topic.
Interests = Callable[[], list[tuple[str | None, str]]]
#: ``presence_entries()``: this process's presence entries, ``(namespace, topic, id, info JSON)``,
#: in slices (see ``Registry.presence_slices``).
PresenceEntries = Callable[[], Iterator[list[tuple[str, str, str, str]]]]
#: ``on_command(command)``: a revoke sent by another process (see :func:`encode_command`), from any thread.
OnCommand = Callable[[dict[str, Any]], None]
#: ``after_deliveries(fn)``: run ``fn`` in the server's hub once every delivery handed over so
#: far has been made; False when the server is not running (``fn`` will not run).
AfterDeliveries = Callable[[Callable[[], None]], bool]
#: What a presence read answers: the entries (``{"id", "info"}``), or their number with ``count_only``.
Presence = list[dict[str, Any]] | int


class Broker:
    """In-process pub/sub: nothing leaves the process."""

    @property
    def stores_history(self) -> bool:
        """The broker stores the topics' history (offsets come from it); the server keeps none of its own."""
        return False

    #: :meth:`read_presence` answers for every process.
    shares_presence = False
    #: Seconds a blocking read (:meth:`read_history`, :meth:`read_presence`) waits at most
    #: for the store; the server bounds its own wait for a recovery from it.
    read_timeout = 3.0
    #: Set by the server before :meth:`start`: applies a command from another process.
    on_command: OnCommand | None = None
    #: Set by the server before :meth:`start`: ``on_gap(namespace, topic)``, from any thread,
    #: when the broker knows that the topic's local subscribers may have missed stored
    #: publishes it cannot deliver (see :class:`~syncws.pubsub.redis_broker.RedisBroker`).
    on_gap: Callable[[str, str], None] | None = None

    # What the broker counts, for ``server.stats()``, the readiness check and the metrics:
    # the same names on every broker (an in-process one has nothing to reach or relay).
    #: Whether the broker reaches its store; None when there is nothing to reach.
    connected: bool | None = None
    relayed = 0  # publishes the store took
    dropped = 0  # relays dropped while the store was unreachable
    reconnects = 0  # connections made again after losing the store
    resynced = 0  # stored publishes delivered by a resync after a lost connection
    gaps = 0  # times a resync could not bridge a lost connection

    def stats(self) -> dict[str, object]:
        """The counts above by name, with the broker's kind."""
        return {
            "kind": type(self).__name__,
            "connected": self.connected,
            "relayed": self.relayed,
            "dropped": self.dropped,
            "reconnects": self.reconnects,
            "resynced": self.resynced,
            "gaps": self.gaps,
        }

    def configure(
        self,
        history_size: int,
        history_ttl: float | None,
        presence_ttl: float,
        presence_entries: PresenceEntries,
        after_deliveries: AfterDeliveries,
    ) -> None:
        """The server's history and presence settings, once, before :meth:`start`.

        ``presence_entries()`` is this process's presence, for a broker that
        shares it; ``after_deliveries(fn)`` runs ``fn`` in the server once the
        deliveries handed over before it are made.
        """

    def start(self, deliver: Deliver, interests: Interests) -> None:
        """Called in the server's hub once it is running.

        ``deliver`` takes relayed publishes (any thread); ``interests()`` is
        what the server's subscribers want right now (later changes arrive
        through :meth:`interest`).
        """

    def stop(self) -> None:
        """Called when the server stops."""

    def relay(self, namespace: str | None, topic: str, outgoing: Outgoing) -> None:
        """Send a local publish to the other processes (None: every namespace)."""

    def interest(self, namespace: str | None, topic: str, present: bool) -> None:
        """The first local subscriber of (namespace, topic) appeared, or the last left.

        ``namespace`` None stands for "topic in any namespace".  Called with the
        registry's lock held: record and return, never block.
        """

    def publish_stored(self, namespace: str | None, topic: str, outgoing: Outgoing, exclude_id: str | None) -> None:
        """Store and relay a publish (``stores_history`` brokers only); it comes back through ``deliver``."""
        raise NotImplementedError

    def read_history(
        self, namespace: str, topic: str, since: str | None, limit: int | None, *, recovering: bool = False
    ) -> tuple[list[Outgoing], bool, str | None] | None:
        """``(publishes after since, recovered, newest offset)``, None when the store cannot be read.

        Blocking (never called in the hub).  ``recovering``: a subscription
        is waiting for this read; the broker returns once every publish made
        before the read was handed to ``deliver`` (see ``after_deliveries``).
        """
        raise NotImplementedError

    def presence_changed(self, namespace: str, topic: str, entry_id: str, info: str | None) -> None:
        """A local presence entry appeared (``info``, JSON text) or went (None); never blocks."""

    def read_presence(self, topic: str, namespace: str | None, count_only: bool = False) -> Presence:
        """Every process's presence of ``topic`` (``shares_presence`` brokers only; blocking)."""
        raise NotImplementedError

    def command(self, command: dict[str, Any]) -> None:
        """Send a revoke to the other processes (the server applied it locally already); never blocks.

        In-process: nothing to send.  Every process calls its ``on_command``
        with it; a process drops the ones it sent itself.
        """


LocalBroker = Broker


# -- channels and envelopes ---------------------------------------------------------


def topic_tag(prefix: str, topic: str) -> str:
    """``<prefix>:{<topic>}``: how every Redis key and channel of ``topic`` starts.

    The braces are a Redis Cluster hash tag: everything of one topic lies in
    one hash slot.  The topic is percent-encoded, so neither ':' nor a brace
    in it can make two names collide or end the tag early.
    """
    return f"{prefix}:{{{quote(topic, safe='')}}}"


def channel_name(prefix: str, namespace: str | None, topic: str) -> str:
    """One channel per (namespace, topic); ``namespace`` None: the all-namespaces channel.

    Parts are percent-encoded so a ':' in a namespace ("chat:general") cannot
    make two pairs share a channel.
    """
    if namespace is None:
        return f"{topic_tag(prefix, topic)}:all"
    return f"{topic_tag(prefix, topic)}:ns:{quote(namespace, safe='')}"


def new_origin() -> str:
    return uuid.uuid4().hex


#: The operations of a command: what ``server.disconnect`` and ``server.unsubscribe`` send.
COMMAND_OPS = frozenset({"disconnect", "unsubscribe"})


def command_channel(prefix: str) -> str:
    """The one channel every server of ``prefix`` listens on for commands."""
    return f"{{{prefix}}}:cmd"


def encode_command(origin: str, op: str, **fields: Any) -> bytes:
    """A command as JSON: ``v`` version, ``o`` origin, ``op`` and its fields (``user``, ``topic``, ...)."""
    return json.dumps({"v": 1, "o": origin, "op": op, **fields}, separators=(",", ":")).encode("utf-8")


def decode_command(data: bytes) -> dict[str, Any]:
    """A command sent by :func:`encode_command`; ValueError on anything malformed."""
    command = json.loads(data)
    if not isinstance(command, dict) or command.get("v") != 1 or command.get("op") not in COMMAND_OPS:
        raise ValueError("unknown command")
    if not isinstance(command.get("o"), str) or not isinstance(command.get("user"), str):
        raise ValueError("command without an origin or a user")
    return command


def encode_envelope(origin: str, namespace: str | None, topic: str, outgoing: Outgoing) -> bytes:
    """One header line of JSON, then the payload as it is.

    Header fields: ``v`` version, ``o`` origin process, ``n`` namespace,
    ``t`` topic, ``b`` binary, ``j`` JSON payload; a stored publish (made by
    the Redis broker's script) adds ``f`` its offset and ``x`` the id of the
    publishing peer, and ``k`` when servers with and without history share
    the prefix: "h" for a copy meant for servers with history only, "p" for
    the others.
    """
    header = {"v": 1, "o": origin, "n": namespace, "t": topic, "b": outgoing.is_binary, "j": outgoing.is_json}
    return json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n" + outgoing.payload


def decode_envelope(data: bytes) -> tuple[str, str | None, str, Outgoing, str | None, str | None]:
    """Return (origin, namespace, topic, outgoing, exclude_id, audience); ValueError on anything malformed.

    ``outgoing.offset`` is the offset of a stored publish, else None;
    ``audience`` "h" or "p" (see :func:`encode_envelope`), else None.
    """
    head, sep, payload = data.partition(b"\n")
    if not sep:
        raise ValueError("relayed message without a header")
    header = json.loads(head)
    if not isinstance(header, dict) or header.get("v") != 1 or isinstance(header.get("v"), bool):
        raise ValueError("unknown relayed message version")
    origin, namespace, topic = header.get("o"), header.get("n"), header.get("t")
    if not isinstance(origin, str):
        raise ValueError("relayed message without an origin")
    if not isinstance(topic, str) or not (namespace is None or isinstance(namespace, str)):
        raise ValueError("relayed message with a bad namespace or topic")
    offset, exclude, audience = header.get("f"), header.get("x"), header.get("k")
    if not (offset is None or isinstance(offset, str)) or not (exclude is None or isinstance(exclude, str)):
        raise ValueError("relayed message with a bad offset or sender")
    if audience not in (None, "h", "p"):
        raise ValueError("relayed message with an unknown audience")
    opcode = OP_BINARY if header.get("b") else OP_TEXT
    if opcode == OP_TEXT:
        payload.decode("utf-8")  # a text frame must be UTF-8: UnicodeDecodeError is a ValueError
    outgoing = Outgoing.from_payload(opcode, payload, is_json=opcode == OP_TEXT and header.get("j") is True)
    outgoing.topic, outgoing.offset = topic, offset
    return origin, namespace, topic, outgoing, exclude, audience
