"""Token buckets and the client address behind proxies, with numbers and strings only."""

from __future__ import annotations

import ipaddress

import pytest

from syncws.protocol.limits import ForwardedHeader, TokenBucket, client_address, forwarded_for

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


XFF, FWD = ForwardedHeader.X_FORWARDED_FOR, ForwardedHeader.FORWARDED


@pytest.mark.parametrize(
    "peer, header, kind, expected",
    [
        ("203.0.113.9", "1.2.3.4", XFF, "203.0.113.9"),  # not a trusted proxy: the header is ignored
        ("10.0.0.2", "1.2.3.4", XFF, "1.2.3.4"),
        ("10.0.0.2", "1.2.3.4, 10.0.0.7", XFF, "1.2.3.4"),  # two proxies of ours
        ("10.0.0.2", "6.6.6.6, 1.2.3.4", XFF, "1.2.3.4"),  # a forged left part is never reached
        ("10.0.0.2", "10.0.0.9, 10.0.0.7", XFF, "10.0.0.9"),  # every hop trusted: the first
        ("10.0.0.2", "nonsense, 1.2.3.4", XFF, "1.2.3.4"),
        ("10.0.0.2", "1.2.3.4, nonsense", XFF, "10.0.0.2"),  # garbled last hop: the proxy itself
        ("10.0.0.2", "", XFF, "10.0.0.2"),
        ("10.0.0.2", None, XFF, "10.0.0.2"),
        ("10.0.0.2", "1.2.3.4:5678", XFF, "1.2.3.4"),
        ("::1", "2001:db8::1", XFF, "2001:db8::1"),
        ("10.0.0.2", 'for=192.0.2.60;proto=http, for="[2001:db8::17]:4711"', FWD, "2001:db8::17"),
        ("10.0.0.2", "for=192.0.2.43", FWD, "192.0.2.43"),
        ("10.0.0.2", "proto=https", FWD, "10.0.0.2"),  # no for=: the proxy itself
        ("10.0.0.2", "for=6.6.6.6, for=1.2.3.4", FWD, "1.2.3.4"),  # a forged left part again
        ("/run/syncws.sock", "1.2.3.4", XFF, "/run/syncws.sock"),  # not an IP address
        (None, "1.2.3.4", XFF, None),
    ],
)
def test_client_address(peer, header, kind, expected):
    assert client_address(peer, header, TRUSTED, kind) == expected


def test_without_trusted_proxies_the_peer_is_the_client():
    assert client_address("10.0.0.2", "1.2.3.4", ()) == "10.0.0.2"


def test_each_kind_names_its_environ_key():
    assert XFF.environ_key == "HTTP_X_FORWARDED_FOR"
    assert FWD.environ_key == "HTTP_FORWARDED"


def test_forwarded_for_values_in_order():
    header = 'for=192.0.2.43, For="[2001:db8:cafe::17]";proto=https, by=203.0.113.60, for=unknown'
    assert forwarded_for(header) == ["192.0.2.43", '"[2001:db8:cafe::17]"', "unknown"]
