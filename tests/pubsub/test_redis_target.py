"""Broker URLs: every scheme, credentials, options, and a clear error for anything else (no Redis needed)."""

from __future__ import annotations

import pytest

from syncws import ConfigurationError
from syncws.pubsub.redis_scripts import check_prefix, fleet_keys, history_key, presence_keys, spaces_key
from syncws.pubsub.redis_target import Topology, parse_broker_url


def test_one_server_with_an_acl_user_and_a_database():
    target = parse_broker_url("redis://app:p%40ss@cache.internal:6380/3")
    assert (target.topology, target.nodes, target.db) == (Topology.SINGLE, (("cache.internal", 6380),), 3)
    assert (target.username, target.password, target.tls) == ("app", "p@ss", False)
    assert "p@ss" not in target.display and target.display.startswith("redis://app:***@")


def test_tls_options_and_valkey_synonyms():
    target = parse_broker_url("valkeys://h?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required&ssl_check_hostname=off")
    assert target.tls and target.nodes == (("h", 6379),)
    assert target.options == {"ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": "required", "ssl_check_hostname": False}
    assert parse_broker_url("valkey://h:7000").nodes == (("h", 7000),)


def test_sentinel_and_cluster_urls():
    sentinel = parse_broker_url("redis+sentinel://:pw@s1,s2:26380/mymaster/2?sentinel_password=sp")
    assert sentinel.topology is Topology.SENTINEL and sentinel.service == "mymaster" and sentinel.db == 2
    assert sentinel.nodes == (("s1", 26379), ("s2", 26380)) and sentinel.password == "pw"
    assert sentinel.sentinel_auth == {"password": "sp"}
    cluster = parse_broker_url("rediss+cluster://n1:7000,[::1]:7001?sharded_pubsub=no")
    assert cluster.topology is Topology.CLUSTER and cluster.tls and cluster.sharded_pubsub == "no"
    assert cluster.nodes == (("n1", 7000), ("::1", 7001))
    unix = parse_broker_url("unix:///run/redis.sock?db=1")
    assert (unix.unix_path, unix.db) == ("/run/redis.sock", 1)


@pytest.mark.parametrize(
    "url, words",
    [
        ("http://h", "unsupported broker URL"),
        ("redis://h?sockettimeout=1", "unknown broker URL option 'sockettimeout'"),
        ("redis://h?sharded_pubsub=maybe", "sharded_pubsub"),
        ("redis://h:port", "bad port"),
        ("redis://h:70000", "bad port"),
        ("redis://a,b", "several hosts"),
        ("redis+sentinel://s1", "names no master"),
        ("redis+cluster://n1/2", "database 0 only"),
        ("redis://h/x", "not a database number"),
        ("unix://", "no socket path"),
    ],
)
def test_bad_urls_are_configuration_errors(url, words):
    with pytest.raises(ConfigurationError, match=words.replace("(", r"\(")):
        parse_broker_url(url)


def test_the_key_layout_puts_a_topic_in_one_hash_slot():
    from redis.crc import key_slot

    keys = [history_key("p", "/ws/a", "t:1"), spaces_key("p", "t:1"), *presence_keys("p", "t:1")]
    assert keys[0] == "p:{t%3A1}:h:%2Fws%2Fa"
    assert len({key_slot(key.encode()) for key in keys}) == 1
    assert fleet_keys("p") == ["{p}:servers", "{p}:settings"]
    with pytest.raises(ConfigurationError):
        check_prefix("a{b}")
