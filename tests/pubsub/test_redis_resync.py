"""A lost subscriber connection is resynced from history: filled in, or the subscribers resume, never a silent gap.

The broker reaches a private redis-server through a proxy the test controls:
``drop()`` cuts the connections and ``blackhole`` keeps new ones frozen, so the
server's subscriber is away while a Publisher (straight to Redis) publishes,
or while the test rewrites the stream the way a failover to a lagging replica
would.
"""

from __future__ import annotations

import json
import uuid

import pytest

from syncws import Publisher
from syncws.pubsub.redis_broker import RedisBroker
from syncws.pubsub.redis_scripts import history_key

from ..apps.history_app import app as history_app
from ..conftest import wait_until
from ..support.history import Peer, open_stream
from ..support.proxy import StallingProxy
from ..support.redis import RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture
def setup(tmp_path, start_server, opened):
    with RedisServer(tmp_path) as redis_server:
        proxy = StallingProxy(redis_server.port)
        prefix = "r" + uuid.uuid4().hex[:8]
        broker = RedisBroker(proxy.url, prefix=prefix, health_check_interval=1.0, read_timeout=2.0)
        server = start_server(history_app, broker=broker, history_size=5)
        assert wait_until(lambda: broker.connected, timeout=10)
        topic = "t" + uuid.uuid4().hex[:8]
        peer = Peer(server, "a", (topic,), envelope="1")
        opened(peer)
        peer.until_open()
        yield redis_server, proxy, broker, server, topic, peer
        proxy.close()


def _received(peer, count):
    return [json.loads(peer.get()) for _ in range(count)]


def _outage(proxy, broker):
    proxy.blackhole = True
    proxy.drop()
    assert wait_until(lambda: not broker.connected, timeout=5), "the outage went unnoticed"


def _rewrite(client, key, entries) -> None:
    """The stream as a failover to a replica that held only ``entries`` would leave it."""
    client.delete(key)
    for entry_id, fields in entries:
        client.xadd(key, fields, id=entry_id)


def _resumes_not_recovered(server, topic, offset, opened) -> None:
    """The subscriber was asked to resume; resuming from ``offset`` says ``recovered=False``."""
    again = Peer(server, "a", (topic,), envelope="1", since=offset)
    opened(again)
    _, hello = again.until_open()
    assert hello["recovery"][topic][0] is False


def _back(proxy, broker):
    proxy.blackhole = False
    assert wait_until(lambda: broker.connected, timeout=20), "the broker never came back"


def test_what_was_stored_meanwhile_is_delivered_after_the_connection_comes_back(setup):
    redis_server, proxy, broker, server, topic, peer = setup
    server.publish(topic, "m0", namespace="/ws/a")
    (first,) = _received(peer, 1)
    _outage(proxy, broker)
    with Publisher(redis_server.url, prefix=broker.prefix) as publisher:
        for i in (1, 2, 3):
            publisher.publish(topic, f"m{i}", namespace="/ws/a")
    _back(proxy, broker)
    missed = _received(peer, 3)
    assert [m["data"] for m in missed] == ["m1", "m2", "m3"]  # in order, each once
    assert broker.resynced == 3 and broker.gaps == 0
    server.publish(topic, "m4", namespace="/ws/a")
    (live,) = _received(peer, 1)
    assert live["data"] == "m4" and not peer.closed.is_set()
    epoch, seq = first["offset"].split("-")
    assert [m["offset"] for m in missed] == [f"{epoch}-{int(seq) + i}" for i in (1, 2, 3)]  # the stored offsets


def test_a_history_trimmed_past_the_last_delivery_makes_the_subscribers_resume_not_recovered(setup, opened):
    redis_server, proxy, broker, server, topic, peer = setup
    stream, _, _ = open_stream(server, (topic,))  # an event stream of the topic too
    opened(stream)
    server.publish(topic, "m0", namespace="/ws/a")
    (first,) = _received(peer, 1)
    assert stream.next_event().data == "m0"
    _outage(proxy, broker)
    with Publisher(redis_server.url, prefix=broker.prefix) as publisher:
        for i in range(1, 9):  # more than history_size (5): m1..m3 are trimmed
            publisher.publish(topic, f"m{i}", namespace="/ws/a")
    _back(proxy, broker)
    assert peer.closed.wait(10), "the subscriber was not asked to resume"
    stream.wait_eof(10)  # the stream ends: a browser's EventSource resumes with Last-Event-ID
    assert wait_until(lambda: broker.gaps == 1)
    again = Peer(server, "a", (topic,), envelope="1", since=first["offset"])
    opened(again)
    replay, hello = again.until_open()
    assert hello["recovery"][topic][0] is False  # told, not silently short
    assert [json.loads(item)["data"] for item in replay] == ["m4", "m5", "m6", "m7", "m8"]


def test_publishes_lost_by_redis_after_delivery_start_a_new_epoch(setup, opened):
    """As a failover to a replica that had not received the newest entries: delivered offsets must never resume."""
    redis_server, proxy, broker, server, topic, peer = setup
    for i in range(5):
        server.publish(topic, f"m{i}", namespace="/ws/a")
    delivered = _received(peer, 5)
    epoch = delivered[-1]["offset"].split("-")[0]
    _outage(proxy, broker)
    client = redis_server.client()
    key = history_key(broker.prefix, "/ws/a", topic)
    _rewrite(client, key, client.xrange(key, count=3))  # the "replica" had m0..m2 only
    _back(proxy, broker)
    assert peer.closed.wait(10), "the subscriber was not asked to resume"
    assert wait_until(lambda: broker.gaps == 1)
    last = client.xinfo_stream(key)["last-generated-id"]
    assert last.split("-")[0] != epoch  # a new epoch: m3's and m4's offsets can never resume
    _resumes_not_recovered(server, topic, delivered[-1]["offset"], opened)


def test_a_rewritten_entry_at_the_last_delivery_is_noticed(setup, opened):
    """The lost publishes' offsets were reused by new ones before the resync: the content tells."""
    redis_server, proxy, broker, server, topic, peer = setup
    for i in range(3):
        server.publish(topic, f"m{i}", namespace="/ws/a")
    delivered = _received(peer, 3)
    _outage(proxy, broker)
    client = redis_server.client()
    key = history_key(broker.prefix, "/ws/a", topic)
    ((first_id, fields),) = client.xrange(key, count=1)
    epoch = first_id.split("-")[0]
    others = [(f"{epoch}-{seq}", {**fields, "d": f"other-{seq}"}) for seq in (1, 2, 3)]
    _rewrite(client, key, [(first_id, fields), *others])  # m1, m2 lost; their offsets reused by others
    _back(proxy, broker)
    assert peer.closed.wait(10), "the subscriber was not asked to resume"
    _resumes_not_recovered(server, topic, delivered[-1]["offset"], opened)


def test_an_offset_of_the_old_key_layout_resumes_not_recovered(setup, opened):
    """Streams written before the hash-tag layout are another history: never a wrong replay from them."""
    redis_server, _, broker, server, topic, _ = setup
    client = redis_server.client()
    old_key = f"{broker.prefix}:h:%2Fws%2Fa:{topic}"  # how an older syncws named the stream
    for i in range(3):
        client.xadd(old_key, {"d": f"old {i}", "b": "0", "j": "0", "t": "0"}, id=f"777-{i}")
    server.publish(topic, "new", namespace="/ws/a")
    assert wait_until(lambda: client.exists(history_key(broker.prefix, "/ws/a", topic)))
    peer = Peer(server, "a", (topic,), envelope="1", since="777-1")
    opened(peer)
    replay, hello = peer.until_open()
    assert hello["recovery"][topic][0] is False
    assert [json.loads(item)["data"] for item in replay] == ["new"]  # the new history, never "old 2"
