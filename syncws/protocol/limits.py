"""Guardrails without I/O: token buckets, and the client address behind trusted proxies.

Both are pure: a bucket is told the time, the address resolver is given the
peer address and the headers.  The server layer applies them (a rate-limited
peer is closed or its message dropped before any hook sees it; caps answer
503 and 429), so they are tested here with numbers and strings only.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full.

    :meth:`take` never waits: it answers whether ``cost`` tokens are there
    (and takes them).  A cost larger than the burst is allowed when the
    bucket is full, so a single message larger than the byte burst is not
    refused for ever; it leaves the bucket in debt instead.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def take(self, cost: float, now: float) -> bool:
        tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if tokens >= cost or tokens >= self.burst:
            self._tokens = tokens - cost
            return True
        self._tokens = tokens
        return False


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # Forwarded: for="[2001:db8::1]:4711"
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # 192.0.2.1:4711
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: Sequence[Network]) -> bool:
    return any(address in network for network in networks)


def forwarded_for(header: str) -> list[str]:
    """The ``for=`` values of a ``Forwarded`` header (RFC 7239), in order."""
    found = []
    for element in header.split(","):
        for pair in element.split(";"):
            name, sep, value = pair.partition("=")
            if sep and name.strip().lower() == "for":
                found.append(value.strip())
    return found


class ForwardedHeader(enum.Enum):
    """The header a trusted proxy reports the client's address in (``forwarded_header``).

    Exactly one is read: a proxy overwrites or appends to the header it is
    configured to set and passes any other through untouched, so reading a
    second one would believe whatever a client put there.
    """

    X_FORWARDED_FOR = "x-forwarded-for"
    FORWARDED = "forwarded"

    @property
    def environ_key(self) -> str:
        return "HTTP_" + self.value.upper().replace("-", "_")

    def chain(self, header: str) -> list[str]:
        """The addresses the header lists, client first."""
        return forwarded_for(header) if self is ForwardedHeader.FORWARDED else header.split(",")


def client_address(
    peer: str | None,
    header: str | None,
    trusted: Sequence[Network],
    kind: ForwardedHeader = ForwardedHeader.X_FORWARDED_FOR,
) -> str | None:
    """The client's address: ``peer`` unless it is a trusted proxy.

    From a trusted proxy, the chain in ``header`` (the value of the one header
    ``kind`` names) is walked from the right, skipping trusted proxies; the
    first address that is not one is the client.  Anything unparsable in the
    chain stops the walk there and the last trusted hop's view is kept (the
    address of the proxy itself): a forged or garbled header never yields an
    address the proxies did not vouch for, and what a client wrote to the left
    of what its proxy appended is never reached.  From anyone else the header
    is ignored.
    """
    if peer is None or not trusted:
        return peer
    current = _address(peer)
    if current is None or not _trusted(current, trusted):
        return peer
    chain = kind.chain(header) if header else []
    client = peer
    for hop in reversed([item for item in chain if item.strip()]):
        address = _address(hop)
        if address is None:
            break
        client = str(address)
        if not _trusted(address, trusted):
            break
    return client
