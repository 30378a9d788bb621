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
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from urllib.parse import quote

from ..protocol.frames import OP_BINARY, OP_TEXT
from ..protocol.payload import Outgoing

#: How a broker hands a relayed publish to its server: ``deliver(namespace,
#: topic, outgoing)``, from any thread; the server delivers it to its local
#: subscribers only.
Deliver = Callable[[str | None, str, Outgoing], None]
#: Every (namespace, topic) with local subscribers, plus (None, topic) per topic.
Interests = Callable[[], list[tuple[str | None, str]]]


class Broker:
    """In-process pub/sub: nothing leaves the process."""

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


LocalBroker = Broker


# -- channels and envelopes ---------------------------------------------------------


def channel_name(prefix: str, namespace: str | None, topic: str) -> str:
    """One channel per (namespace, topic); ``namespace`` None: the all-namespaces channel.

    Parts are percent-encoded so a ':' in a namespace ("chat:general") cannot
    make two pairs share a channel.
    """
    if namespace is None:
        return f"{prefix}:all:{quote(topic, safe='')}"
    return f"{prefix}:ns:{quote(namespace, safe='')}:{quote(topic, safe='')}"


def new_origin() -> str:
    return uuid.uuid4().hex


def encode_envelope(origin: str, namespace: str | None, topic: str, outgoing: Outgoing) -> bytes:
    header = {"v": 1, "o": origin, "n": namespace, "t": topic, "b": outgoing.is_binary}
    return json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n" + outgoing.payload


def decode_envelope(data: bytes) -> tuple[str, str | None, str, Outgoing]:
    """Return (origin, namespace, topic, outgoing); ValueError on anything malformed."""
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
    opcode = OP_BINARY if header.get("b") else OP_TEXT
    if opcode == OP_TEXT:
        payload.decode("utf-8")  # a text frame must be UTF-8: UnicodeDecodeError is a ValueError
    return origin, namespace, topic, Outgoing.from_payload(opcode, payload)
