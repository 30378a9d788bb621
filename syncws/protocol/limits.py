"""Guardrails without I/O: token buckets, and the client address behind trusted proxies.

Both are pure: a bucket is told the time, the address resolver is given the
peer address and the headers.  The server layer applies them (a rate-limited
peer is closed or its message dropped before any hook sees it; caps answer
503 and 429), so they are tested here with numbers and strings only.
"""

from __future__ import annotations

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


def client_address(
    peer: str | None, forwarded: str | None, x_forwarded_for: str | None, trusted: Sequence[Network]
) -> str | None:
    """The client's address: ``peer`` unless it is a trusted proxy.

    From a trusted proxy, the chain it reports (``Forwarded``'s ``for=``,
    else ``X-Forwarded-For``) is walked from the right, skipping trusted
    proxies; the first address that is not one is the client.  Anything
    unparsable in the chain stops the walk there and the last trusted hop's
    view is kept (the address of the proxy itself): a forged or garbled
    header never yields an address the proxies did not vouch for.  From
    anyone else the headers are ignored.
    """
    if peer is None or not trusted:
        return peer
    current = _address(peer)
    if current is None or not _trusted(current, trusted):
        return peer
    chain = forwarded_for(forwarded) if forwarded else (x_forwarded_for or "").split(",")
    client = peer
    for hop in reversed([item for item in chain if item.strip()]):
        address = _address(hop)
        if address is None:
            break
        client = str(address)
        if not _trusted(address, trusted):
            break
    return client
