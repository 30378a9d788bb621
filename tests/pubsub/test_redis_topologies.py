"""The Redis broker beyond one server: a Redis Cluster (sharded and classic pub/sub), Sentinel, TLS and ACL users.

Every Redis here is real and started by the tests: a 3-master cluster with one
replica each (``redis-cli --cluster create``) and a Sentinel group (one
master, one replica, three sentinels), each once per session; failover tests
kill a master with kill -9 and get a cluster or group of their own.  Servers are
in-process syncws servers with a ``RedisBroker`` (history on), and clients
are real WebSocket clients.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
import redis
import trustme

from syncws import Publisher
from syncws.pubsub.broker import channel_name
from syncws.pubsub.redis_broker import RedisBroker

from ..apps.history_app import app as history_app
from ..conftest import wait_until
from ..support.history import Peer, history, presence
from ..support.redis import RedisCluster, RedisServer, SentinelGroup

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    with RedisCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def sentinel_group(tmp_path_factory):
    with SentinelGroup(tmp_path_factory.mktemp("sentinel")) as group:
        yield group


def _servers(start_server, url: str, count: int = 2, **options):
    prefix = "t" + uuid.uuid4().hex[:8]
    brokers = [RedisBroker(url, prefix=prefix, read_timeout=2.0, health_check_interval=1.0) for _ in range(count)]
    options.setdefault("history_size", 1000)
    servers = [start_server(history_app, broker=broker, **options) for broker in brokers]
    assert wait_until(lambda: all(b.connected for b in brokers), timeout=15), "a broker never reached Redis"
    return prefix, brokers, servers


def _topics_on_every_shard(cluster: RedisCluster, prefix: str, per_shard: int = 1) -> list[str]:
    """Topics whose channels (in /ws/a) lie on each master, ``per_shard`` of each."""
    wanted = {node.port: per_shard for node in cluster.masters()}
    topics = []
    while any(wanted.values()):
        topic = "t" + uuid.uuid4().hex[:8]
        port = cluster.master_of(channel_name(prefix, "/ws/a", topic)).port
        if wanted.get(port):
            wanted[port] -= 1
            topics.append(topic)
    return topics


def _shard_numsub(cluster: RedisCluster, channel: str) -> dict[int, int]:
    """SSUBSCRIBE connections to ``channel`` per master (PUBSUB SHARDNUMSUB asked of each)."""
    counts = {}
    for node in cluster.masters():
        reply = node.client(socket_timeout=2).execute_command("PUBSUB", "SHARDNUMSUB", channel)
        counts[node.port] = int(reply[1])
    return counts


def _wait_subscribed(cluster: RedisCluster, prefix: str, topic: str) -> None:
    """Until the shard of ``topic`` shows a subscriber of its /ws/a channel (a local subscribe reaches Redis later)."""
    channel = channel_name(prefix, "/ws/a", topic)
    home = cluster.master_of(channel).port
    assert wait_until(lambda: _shard_numsub(cluster, channel)[home] >= 1), f"{channel} never subscribed"


def _command_calls(node: RedisServer, command: str) -> int:
    stats = node.client(socket_timeout=2).info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def _envelopes(peer: Peer, timeout: float = 5.0) -> dict:
    return json.loads(peer.get(timeout))


# -- cluster: delivery, history, presence ------------------------------------------------------


def test_cluster_delivers_stores_and_shows_presence_across_processes_on_every_shard(
    redis_cluster, start_server, opened
):
    prefix, brokers, (a, b) = _servers(start_server, redis_cluster.url)
    assert all(broker.sharded for broker in brokers)  # Redis 7: sharded pub/sub
    topics = _topics_on_every_shard(redis_cluster, prefix)
    assert len({redis_cluster.master_of(channel_name(prefix, "/ws/a", t)).port for t in topics}) == 3
    peers = []
    for topic in topics:
        peer = Peer(b, "a", (topic,), info=json.dumps({"name": topic}))
        opened(peer)
        peer.until_open()
        peers.append(peer)
    for topic in topics:
        # the subscription lives on the topic's own shard, nowhere else
        _wait_subscribed(redis_cluster, prefix, topic)
        counts = _shard_numsub(redis_cluster, channel_name(prefix, "/ws/a", topic))
        master = redis_cluster.master_of(channel_name(prefix, "/ws/a", topic)).port
        assert counts[master] >= 1 and all(count == 0 for port, count in counts.items() if port != master), counts
    for topic in topics:
        a.publish(topic, f"hello {topic}", namespace="/ws/a")
    for topic, peer in zip(topics, peers, strict=True):
        assert peer.get() == f"hello {topic}"
        assert [data for _, data in history(a, topic)] == [f"hello {topic}"]  # stored on its shard
        # b's subscriber, seen from a: in its namespace, and in every namespace (the script checks the set)
        assert [e["info"] for e in presence(a, topic, "/ws/a")["presence"]] == [{"name": topic}]
        assert wait_until(lambda t=topic: presence(a, t)["count"] == 1)
    # a Publisher (no server of its own) stores with the servers' settings and reaches them
    with Publisher(redis_cluster.url, prefix=prefix) as publisher:
        for topic in topics:
            assert publisher.publish(topic, f"job {topic}") >= 1
    for topic, peer in zip(topics, peers, strict=True):
        assert peer.get() == f"job {topic}"
        assert [data for _, data in history(b, topic)] == [f"hello {topic}", f"job {topic}"]


def test_cluster_a_publish_goes_to_the_shard_of_its_topic_only(redis_cluster, start_server, opened):
    prefix, _, (a, b) = _servers(start_server, redis_cluster.url, history_size=0)
    topics = _topics_on_every_shard(redis_cluster, prefix)
    peers = []
    for topic in topics:
        peer = Peer(b, "a", (topic,))
        opened(peer)
        peer.until_open()
        peers.append(peer)
        _wait_subscribed(redis_cluster, prefix, topic)
    target, masters = topics[0], redis_cluster.masters()
    home = redis_cluster.master_of(channel_name(prefix, "/ws/a", target)).port
    before = {node.port: _command_calls(node, "spublish") for node in masters}
    for i in range(20):
        a.publish(target, f"n{i}", namespace="/ws/a")
    for i in range(20):
        assert peers[0].get() == f"n{i}"
    after = {node.port: _command_calls(node, "spublish") for node in masters}
    grew = {port: after[port] - before[port] for port in after}
    assert grew[home] >= 20, grew
    # other shards saw no publish of this test (other tests of the session are idle meanwhile)
    assert all(count == 0 for port, count in grew.items() if port != home), grew


def test_cluster_with_classic_pubsub_delivers_through_the_bus(redis_cluster, start_server, opened):
    prefix, brokers, (a, b) = _servers(start_server, redis_cluster.url + "?sharded_pubsub=no")
    assert not any(broker.sharded for broker in brokers)
    topic = _topics_on_every_shard(redis_cluster, prefix)[1]
    peer = Peer(b, "a", (topic,))
    opened(peer)
    peer.until_open()
    client = redis_cluster.client()
    channel = channel_name(prefix, "/ws/a", topic)
    assert wait_until(lambda: any(n.client().pubsub_numsub(channel)[0][1] for n in redis_cluster.masters()))
    a.publish(topic, "over the bus", namespace="/ws/a")
    assert peer.get() == "over the bus"
    assert [data for _, data in history(a, topic)] == ["over the bus"]
    client.close()


def test_cluster_recovery_resumes_from_an_offset(redis_cluster, start_server, opened):
    prefix, _, (a, b) = _servers(start_server, redis_cluster.url)
    topic = _topics_on_every_shard(redis_cluster, prefix)[2]
    for i in range(5):
        a.publish(topic, f"m{i}", namespace="/ws/a")
    assert wait_until(lambda: len(history(a, topic)) == 5)
    since = history(a, topic)[1][0]
    peer = Peer(b, "a", (topic,), since=since)
    opened(peer)
    replay, hello = peer.until_open()
    assert replay == ["m2", "m3", "m4"]
    assert hello["recovery"][topic][0] is True


def test_cluster_a_slot_moved_to_another_shard_is_followed(redis_cluster, start_server, opened):
    """Resharding while subscribed: Redis unsubscribes the channel on the old owner, the process subscribes on the new."""
    from redis.crc import key_slot

    prefix, brokers, (a, b) = _servers(start_server, redis_cluster.url)
    topic = _topics_on_every_shard(redis_cluster, prefix)[0]
    channel = channel_name(prefix, "/ws/a", topic)
    peer = Peer(b, "a", (topic,))
    opened(peer)
    peer.until_open()
    _wait_subscribed(redis_cluster, prefix, topic)
    a.publish(topic, "before the move", namespace="/ws/a")
    assert peer.get() == "before the move"
    source = redis_cluster.master_of(channel)
    target = next(node for node in redis_cluster.masters() if node.port != source.port)
    src, dst = source.client(socket_timeout=5), target.client(socket_timeout=5)
    slot = key_slot(channel.encode())
    src_id, dst_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
    for node in redis_cluster.masters():
        node.client(socket_timeout=5).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    assert wait_until(lambda: _shard_numsub(redis_cluster, channel)[target.port] >= 1, timeout=15)
    assert _shard_numsub(redis_cluster, channel)[source.port] == 0
    a.publish(topic, "after the move", namespace="/ws/a")
    assert peer.get() == "after the move"
    assert [data for _, data in history(a, topic)] == ["before the move", "after the move"]  # the stream moved too
    assert all(broker.gaps == 0 for broker in brokers)


# -- failover -------------------------------------------------------------------------------


class Stream:
    """Publishes ``n<i>`` to a topic every 20 ms through a Publisher; remembers what Redis took."""

    def __init__(self, url: str, prefix: str, topic: str) -> None:
        self.publisher = Publisher(url, prefix=prefix, socket_timeout=1, socket_connect_timeout=1)
        self.topic = topic
        self.acked: list[str] = []
        self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            try:
                self.publisher.publish(self.topic, f"n{i}", namespace="/ws/a")
                self.acked.append(f"n{i}")
            except (redis.RedisError, OSError):
                self.failed += 1
            i += 1
            time.sleep(0.02)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.publisher.close()


def _follow(server, topic: str, opened, kill, label: str) -> None:
    """A subscriber follows a stream while ``kill()`` fails its Redis master over; nothing is silently lost.

    The client keeps the offset of the last envelope it got.  When the server
    asks it to reconnect (a gap it cannot bridge) or the connection drops, it
    resumes from that offset: then either the replay fills in what it missed
    (``recovered`` True) or it is told ``recovered=False``.  At the end every
    publish Redis acknowledged is either received or covered by a
    ``recovered=False``.
    """
    peer = Peer(server, "a", (topic,), envelope="1")
    opened(peer)
    peer.until_open()
    received: list[str] = []
    offset = None
    told_not_recovered = False
    stream = Stream(server.runtime.broker.url, server.runtime.broker.prefix, topic)
    try:
        assert wait_until(lambda: len(stream.acked) >= 20, timeout=10)
        killed = time.monotonic()
        kill()
        kill_index = int(stream.acked[-1][1:])
        resumed_after = None
        deadline = killed + 40
        while time.monotonic() < deadline:
            try:
                envelope = _envelopes(peer, timeout=0.5)
            except AssertionError:
                if peer.closed.is_set():  # asked to resume (1012), or dropped: resume from the offset
                    peer = Peer(server, "a", (topic,), envelope="1", since=offset)
                    opened(peer)
                    replay, hello = peer.until_open()
                    recovered = hello["recovery"][topic][0]
                    told_not_recovered |= not recovered
                    for item in replay:
                        message = json.loads(item)
                        received.append(message["data"])
                        offset = message["offset"]
                continue
            received.append(envelope["data"])
            offset = envelope["offset"] or offset
            if resumed_after is None and int(envelope["data"][1:]) > kill_index + 5:
                resumed_after = time.monotonic() - killed  # a publish made after the failover arrived
            if len(received) > 30 and stream.acked[-1] in received and time.monotonic() - killed > 8:
                break
        stream.stop.set()
        stream.thread.join(10)
        assert wait_until(lambda: stream.acked[-1] in received or peer.queue.qsize() > 0, timeout=10)
        while True:
            try:
                envelope = _envelopes(peer, timeout=1.0)
            except AssertionError:
                break
            received.append(envelope["data"])
        missing = [item for item in stream.acked if item not in received]
        print(
            f"{label}: {len(stream.acked)} acknowledged, {stream.failed} refused during the failover, "
            f"{len(missing)} not received, told recovered=False: {told_not_recovered}, "
            f"delivery back {resumed_after if resumed_after is None else round(resumed_after, 1)} s after the kill"
        )
        assert not missing or told_not_recovered, f"silently lost: {missing}"
        assert stream.acked[-1] in received  # delivery resumed after the failover
    finally:
        stream.close()


def test_cluster_master_killed_mid_stream_loses_nothing_silently(tmp_path, start_server, opened):
    with RedisCluster(tmp_path) as cluster:
        prefix, _, (_, b) = _servers(start_server, cluster.url)
        topic = _topics_on_every_shard(cluster, prefix)[0]
        master = cluster.master_of(channel_name(prefix, "/ws/a", topic))
        _follow(b, topic, opened, master.kill, "cluster")
        assert cluster.master_of(channel_name(prefix, "/ws/a", topic)).port != master.port  # a replica took over


def test_sentinel_failover_mid_stream_loses_nothing_silently(tmp_path, start_server, opened):
    with SentinelGroup(tmp_path) as group:
        _, _, (_, b) = _servers(start_server, group.url)
        topic = "t" + uuid.uuid4().hex[:8]
        old = group.master.port
        _follow(b, topic, opened, group.master.kill, "sentinel")
        assert group.current_master() != old


def _across(start_server, opened, url: str, text: str):
    """Two servers on ``url``; a subscriber on the second gets what the first publishes."""
    prefix, _, (a, b) = _servers(start_server, url)
    topic = "t" + uuid.uuid4().hex[:8]
    peer = Peer(b, "a", (topic,))
    opened(peer)
    peer.until_open()
    a.publish(topic, text, namespace="/ws/a")
    assert peer.get() == text
    return prefix, a, topic, peer


def test_sentinel_delivers_stores_and_publishes(sentinel_group, start_server, opened):
    url = sentinel_group.url
    prefix, a, topic, peer = _across(start_server, opened, url, "through the master Sentinel names")
    with Publisher(url, prefix=prefix) as publisher:
        assert publisher.publish(topic, "from a job") >= 1
    assert peer.get() == "from a job"
    assert [data for _, data in history(a, topic)] == ["through the master Sentinel names", "from a job"]


# -- TLS and an ACL user ---------------------------------------------------------------------------


@pytest.fixture
def tls_redis(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, cafile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(certfile)
    cert.private_key_pem.write_to_path(keyfile)
    ca.cert_pem.write_to_path(cafile)
    server = RedisServer(
        tmp_path, None,
        "--tls-cert-file", str(certfile), "--tls-key-file", str(keyfile), "--tls-ca-cert-file", str(cafile),
        "--tls-auth-clients", "no", "--user", "default", "off", "--user", "app", "on", ">s3cret", "~*", "&*", "+@all",
    )  # fmt: skip
    # the plain port becomes the TLS port: every client must speak TLS
    server.extra[:0] = ["--tls-port", str(server.port)]
    server.extra += ["--port", "0"]
    server.ping_options = {"ssl": True, "ssl_ca_certs": str(cafile), "username": "app", "password": "s3cret"}
    with server:
        yield server, str(cafile)


def test_tls_and_an_acl_user(tls_redis, start_server, opened):
    server, cafile = tls_redis
    url = f"rediss://app:s3cret@127.0.0.1:{server.port}/0?ssl_ca_certs={cafile}"
    prefix, _, topic, peer = _across(start_server, opened, url, "encrypted")
    with Publisher(url, prefix=prefix) as publisher:
        assert publisher.publish(topic, "job") == 1  # the one process with a subscriber in /ws/a
    assert peer.get() == "job"
    # a wrong password and a plain connection are refused
    with pytest.raises(redis.RedisError):
        Publisher(f"rediss://app:wrong@127.0.0.1:{server.port}/0?ssl_ca_certs={cafile}").publish(topic, "x")
    with pytest.raises((redis.RedisError, OSError)):
        Publisher(f"redis://app:s3cret@127.0.0.1:{server.port}/0").publish(topic, "x")
    # a certificate the client cannot verify is refused
    with pytest.raises((redis.RedisError, OSError)):
        Publisher(f"rediss://app:s3cret@127.0.0.1:{server.port}/0").publish(topic, "x")
