"""Token buckets and the client address behind proxies, with numbers and strings only."""

from __future__ import annotations

import ipaddress

import pytest

from syncws.protocol.limits import TokenBucket, client_address, forwarded_for

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


def test_a_bucket_starts_full_and_refills_at_its_rate():
    bucket = TokenBucket(2, 4, now=100.0)
    assert [bucket.take(1, 100.0) for _ in range(5)] == [True, True, True, True, False]
    assert not bucket.take(1, 100.4)  # 0.8 tokens
    assert bucket.take(1, 100.5)  # 1.0
    assert not bucket.take(1, 100.5)
    assert [bucket.take(1, 200.0) for _ in range(5)] == [True, True, True, True, False]  # capped at the burst


def test_a_cost_beyond_the_burst_passes_only_from_a_full_bucket_and_leaves_a_debt():
    bucket = TokenBucket(100, 100, now=0.0)
    assert bucket.take(250, 0.0)  # full: one oversized message goes through...
    assert not bucket.take(1, 1.0)  # ...and the debt (-150 + 100) must be paid first
    assert bucket.take(1, 2.0)
    half = TokenBucket(100, 100, now=0.0)
    assert half.take(60, 0.0) and not half.take(250, 0.0)  # not full: refused


@pytest.mark.parametrize(
    "peer, forwarded, xff, expected",
    [
        ("203.0.113.9", None, "1.2.3.4", "203.0.113.9"),  # not a trusted proxy: headers ignored
        ("10.0.0.2", None, "1.2.3.4", "1.2.3.4"),
        ("10.0.0.2", None, "1.2.3.4, 10.0.0.7", "1.2.3.4"),  # two proxies of ours
        ("10.0.0.2", None, "6.6.6.6, 1.2.3.4", "1.2.3.4"),  # a forged left part is never reached
        ("10.0.0.2", None, "10.0.0.9, 10.0.0.7", "10.0.0.9"),  # every hop trusted: the first
        ("10.0.0.2", None, "nonsense, 1.2.3.4", "1.2.3.4"),
        ("10.0.0.2", None, "1.2.3.4, nonsense", "10.0.0.2"),  # garbled last hop: the proxy itself
        ("10.0.0.2", None, "", "10.0.0.2"),
        ("10.0.0.2", None, None, "10.0.0.2"),
        ("10.0.0.2", None, "1.2.3.4:5678", "1.2.3.4"),
        ("::1", None, "2001:db8::1", "2001:db8::1"),
        ("10.0.0.2", 'for=192.0.2.60;proto=http, for="[2001:db8::17]:4711"', "9.9.9.9", "2001:db8::17"),
        ("10.0.0.2", "for=192.0.2.43", None, "192.0.2.43"),
        ("10.0.0.2", "proto=https", "1.2.3.4", "10.0.0.2"),  # Forwarded without for=: not X-Forwarded-For
        ("/run/syncws.sock", None, "1.2.3.4", "/run/syncws.sock"),  # not an IP address
        (None, None, "1.2.3.4", None),
    ],
)
def test_client_address(peer, forwarded, xff, expected):
    assert client_address(peer, forwarded, xff, TRUSTED) == expected


def test_without_trusted_proxies_the_peer_is_the_client():
    assert client_address("10.0.0.2", None, "1.2.3.4", ()) == "10.0.0.2"


def test_forwarded_for_values_in_order():
    header = 'for=192.0.2.43, For="[2001:db8:cafe::17]";proto=https, by=203.0.113.60, for=unknown'
    assert forwarded_for(header) == ["192.0.2.43", '"[2001:db8:cafe::17]"', "unknown"]
