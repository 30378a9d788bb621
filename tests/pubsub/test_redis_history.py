"""History and presence on Redis across processes, restarts and outages.

``python -m syncws tests.apps.history_app:app --broker redis://... --history-size N``
processes share a private redis-server; each test uses a prefix of its own
(``SYNCWS_*`` cannot set one, so the processes use the default prefix and
each test its own topics).  The single-process behaviours, against both
stores, are in ``tests/server/test_delivery.py``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from syncws import BrokerError, Publisher
from syncws.pubsub.broker import channel_name
from syncws.pubsub.redis_broker import RedisBroker
from syncws.pubsub.redis_scripts import history_key

from ..apps.history_app import app as history_app
from ..conftest import wait_until
from ..support import RedisServer, SyncwsProcess, new_topic
from ..support.history import Peer, history, open_stream, presence, publish

pytestmark = pytest.mark.slow  # subprocesses and Redis: not in the fast loop

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.history_app:app"


class HistoryProcess(SyncwsProcess):
    def __init__(self, redis_url: str, *options: str) -> None:
        super().__init__(APP, "--port", "0", "--broker", redis_url, "--history-size", "100", *options, cwd=ROOT)
        self.url = self.wait_for_url()
        assert wait_until(lambda: self._connected(), timeout=10), f"{self!r} never reached Redis"

    def _connected(self) -> bool:
        import requests

        return bool(requests.get(self.url + "/stats", timeout=5).json()["connected"])


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def processes(redis_server):
    """``processes(*options)`` starts one history app process; all are killed at teardown."""
    started: list = []

    def start(*options: str) -> HistoryProcess:
        process = HistoryProcess(redis_server.url, *options)
        started.append(process)
        return process

    yield start
    for process in started:
        process.terminate()


def test_sse_resumes_after_the_server_process_restarts(processes, redis_server, opened):
    topic = new_topic()
    first = processes()
    stream, _, _ = open_stream(first, (topic,))
    for word in ("one", "two"):
        publish(first, topic, word, ns="/ws/a")
    seen = stream.next_events(2)
    stream.close()
    first.terminate()  # the server goes away (a deploy)...
    with Publisher(redis_server.url) as publisher:  # ...and a job publishes meanwhile
        for word in ("three", "four", "five"):
            publisher.publish(topic, word, namespace="/ws/a")
    second = processes()
    resumed, replayed, results = open_stream(second, (topic,), last_event_id=seen[-1].last_event_id)
    opened(resumed)
    assert [e.data for e in replayed] == ["three", "four", "five"]
    assert results[topic] == [True, 3, replayed[-1].last_event_id]
    publish(second, topic, "six", ns="/ws/a")
    assert resumed.next_event().data == "six"


def test_a_client_resumes_on_another_process_with_the_same_offsets(processes, opened):
    topic = new_topic()
    a, b = processes(), processes()
    on_a = Peer(a, "a", (topic,), envelope="1")
    opened(on_a)
    on_a.until_open()
    publish(b, topic, {"n": 1}, ns="/ws/a")  # published on B, delivered on A through Redis
    got = json.loads(on_a.get())
    assert got["data"] == {"n": 1}
    on_a.close()
    for n in (2, 3):
        publish(a, topic, {"n": n}, ns="/ws/a")
    assert wait_until(lambda: len(history(b, topic)) == 3)
    assert history(a, topic) == history(b, topic)  # one history, the same offsets everywhere
    on_b = Peer(b, "a", (topic,), since=got["offset"], envelope="1")
    opened(on_b)
    replay, hello = on_b.until_open()
    assert [json.loads(m)["data"] for m in replay] == [{"n": 2}, {"n": 3}]
    assert hello["recovery"][topic] == [True, 2, history(b, topic)[-1][0]]


def test_presence_across_processes_and_a_killed_process_vanishes_within_the_ttl(processes, opened):
    topic = new_topic()
    a, b = processes("--presence-ttl", "1.5"), processes("--presence-ttl", "1.5")
    on_a = Peer(a, "a", (topic,), info=json.dumps({"on": "a"}))
    on_b = Peer(b, "a", (topic,), info=json.dumps({"on": "b"}))
    stream, _, _ = open_stream(b, (topic,), info=json.dumps("stream on b"))
    for client in (on_a, on_b, stream):
        opened(client)
    ids = {"a": on_a.until_open()[1]["id"], "b": on_b.until_open()[1]["id"]}
    expected = {ids["a"]: {"on": "a"}, ids["b"]: {"on": "b"}}

    def infos(target):
        return {e["id"]: e["info"] for e in presence(target, topic, "/ws/a")["presence"]}

    assert wait_until(lambda: len(infos(a)) == 3)
    for target in (a, b):
        found = infos(target)
        assert {k: v for k, v in found.items() if not k.startswith("sse-")} == expected
        assert sorted(v for k, v in found.items() if k.startswith("sse-")) == ["stream on b"]
        assert presence(target, topic, "/ws/a")["count"] == 3
    on_a.send(op="presence", topic=topic)  # peer.presence() sees every process too
    assert {e["id"] for e in on_a.get_json()["presence"]} == set(infos(a))

    # A peer that leaves is gone at once; a process killed -9 cannot say goodbye:
    # its entries are gone once their last refresh is older than the TTL.
    on_a.close()
    assert wait_until(lambda: ids["a"] not in infos(b), timeout=3)
    b.kill()
    killed = time.monotonic()
    assert wait_until(lambda: infos(a) == {}, timeout=5), infos(a)
    assert time.monotonic() - killed < 1.5 + 1.0  # the TTL, and the polling


def test_a_publisher_stores_with_the_servers_settings(processes, redis_server, opened):
    topic = new_topic()
    server = processes()
    with Publisher(redis_server.url) as publisher:
        assert publisher.publish(topic, {"job": 1}, namespace="/ws/a") == 0  # nobody listening: stored all the same
    assert [data for _, data in history(server, topic)] == [{"job": 1}]
    # a namespace-less publish goes into every namespace with a history or subscriber
    peer = Peer(server, "b", (topic,))
    opened(peer)
    peer.until_open()
    with Publisher(redis_server.url) as publisher:
        publisher.publish(topic, "to all")
    assert peer.get() == "to all"
    assert [d for _, d in history(server, topic, "/ws/a")] == [{"job": 1}, "to all"]
    assert [d for _, d in history(server, topic, "/ws/b")] == ["to all"]


def test_without_servers_keeping_history_a_publisher_only_publishes(redis_server, start_server):
    prefix = "p" + uuid.uuid4().hex[:8]
    broker = RedisBroker(redis_server.url, prefix=prefix)  # history off: no settings in Redis
    server = start_server(history_app, broker=broker)
    assert wait_until(lambda: broker.connected)
    topic = new_topic()
    peer = Peer(server, "a", (topic,))
    peer.until_open()
    try:
        assert wait_until(lambda: redis_server.client().pubsub_numsub(channel_name(prefix, None, topic))[0][1] == 1)
        with Publisher(redis_server.url, prefix=prefix) as publisher:
            assert publisher.publish(topic, "live only") == 1
        assert peer.get() == "live only"
        assert redis_server.client().keys(f"{prefix}:*:h:*") == []
    finally:
        peer.close()


def test_history_ttl_on_redis_drops_old_publishes(processes, redis_server):
    topic = new_topic()
    server = processes("--history-ttl", "0.5")
    publish(server, topic, "old", ns="/ws/a")
    assert wait_until(lambda: len(history(server, topic)) == 1)
    old = history(server, topic)[0][0]
    time.sleep(0.7)  # older than the TTL now
    assert history(server, topic) == []
    publish(server, topic, "new", ns="/ws/a")
    assert wait_until(lambda: [d for _, d in history(server, topic)] == ["new"])
    stream, replayed, results = open_stream(server, (topic,), last_event_id=old)
    stream.close()
    assert [e.data for e in replayed] == ["new"] and results[topic][:2] == [False, 1]
    ttl = redis_server.client().pttl(history_key("syncws", "/ws/a", topic))
    assert 0 < ttl <= 500  # the stream itself expires when the topic stays quiet


def test_keys_quote_names_like_python(processes, redis_server, opened):
    """Keys percent-encode names as urllib.parse.quote(safe=''), the topic in a hash tag (docs/how-to/redis.md)."""
    topic = "odd:topic/é " + uuid.uuid4().hex[:6]
    server = processes()
    room = "r:ö%20x"
    peer = Peer(server, quote(room, safe=""), (topic,))
    opened(peer)
    peer.until_open()
    namespace = "/ws/" + room
    publish(server, topic, "odd", ns=namespace)
    assert peer.get() == "odd"
    stream_key = f"syncws:{{{quote(topic, safe='')}}}:h:{quote(namespace, safe='')}"
    assert wait_until(lambda: redis_server.client().exists(stream_key) == 1)
    assert [d for _, d in history(server, topic, namespace)] == ["odd"]


# -- Redis unreachable ---------------------------------------------------------------------


def test_redis_down_live_delivery_goes_on_and_recovery_says_not_recovered(tmp_path, start_server):
    with RedisServer(tmp_path) as own:
        broker = RedisBroker(own.url, prefix="d" + uuid.uuid4().hex[:8], read_timeout=1.0)
        server = start_server(history_app, broker=broker, history_size=50)
        assert wait_until(lambda: broker.connected)
        topic = new_topic()
        before = Peer(server, "a", (topic,), envelope="1")
        before.until_open()
        try:
            publish(server, topic, "stored", ns="/ws/a")
            stored = json.loads(before.get())
            assert stored["offset"]
            own.kill()  # Redis dies
            publish(server, topic, "while down", ns="/ws/a")
            during = json.loads(before.get())  # still delivered here, without an offset
            assert during == {"topic": topic, "offset": None, "data": "while down"}
            started = time.monotonic()
            late = Peer(server, "a", (topic,), since=stored["offset"])
            replay, hello = late.until_open()
            late.close()
            assert replay == [] and hello["recovery"][topic] == [False, 0, None]
            assert time.monotonic() - started < 3  # bounded: never a hang
            with pytest.raises(BrokerError):
                server.history(topic, "/ws/a")
            assert server.presence(topic, "/ws/a") != []  # this process's presence, answered locally
        finally:
            before.close()
        own.start()  # Redis is back: history works again
        assert wait_until(lambda: broker.connected, timeout=10)
        publish(server, topic, "after", ns="/ws/a")
        assert wait_until(lambda: [d for _, d in history(server, topic)] == ["after"], timeout=5)


def test_a_broken_redis_history_never_breaks_the_server(redis_server, start_server):
    """A stream key of the wrong type: the script fails, the publish is delivered locally all the same."""
    prefix = "w" + uuid.uuid4().hex[:8]
    broker = RedisBroker(redis_server.url, prefix=prefix)
    server = start_server(history_app, broker=broker, history_size=10)
    assert wait_until(lambda: broker.connected)
    topic = new_topic()
    redis_server.client().set(history_key(prefix, "/ws/a", topic), "not a stream")
    peer = Peer(server, "a", (topic,))
    try:
        peer.until_open()
        publish(server, topic, "still delivered", ns="/ws/a")
        assert peer.get() == "still delivered"
    finally:
        peer.close()
    assert server.history(topic, "/ws/a") == []  # nothing it can read as a history


def test_many_concurrent_recoveries_on_a_monkey_patched_server(processes, opened):
    """python -m syncws patches the standard library: reads from many greenlets at once must still work."""
    import threading

    topic = new_topic()
    server = processes()
    for i in range(5):
        publish(server, topic, i, ns="/ws/a")
    assert wait_until(lambda: len(history(server, topic)) == 5)
    since = history(server, topic)[1][0]
    results: list = []

    def resume() -> None:
        peer = Peer(server, "a", (topic,), since=since)
        opened(peer)
        results.append(peer.until_open())

    threads = [threading.Thread(target=resume) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(results) == 40
    for replay, hello in results:
        assert replay == ["2", "3", "4"] and hello["recovery"][topic][:2] == [True, 3]


# -- settings that belong to the servers alive now ------------------------------------------


@pytest.fixture
def plain(redis_server):
    """``plain(*options)``: a ``python -m syncws`` of the history app with the broker and no history, and its URL."""
    started: list = []

    def start(*options: str) -> tuple[SyncwsProcess, str]:
        process = SyncwsProcess(APP, "--port", "0", "--broker", redis_server.url, *options, cwd=ROOT)
        started.append(process)
        return process, process.wait_for_url()

    yield start
    for process in started:
        process.terminate()


def _peers_on(server_url: str, topic: str, count: int) -> tuple[list, set]:
    """``count`` peers of ``/ws/a`` subscribed to ``topic``, and the pids of the processes they landed on."""
    peers, pids = [], set()
    for _ in range(count):
        peer = Peer(server_url, "a", (topic,))
        peers.append(peer)
        pids.add(peer.until_open()[1]["pid"])
    return peers, pids


def _wait_subscribed(redis_server, channel: str, processes: int) -> None:
    client = redis_server.client()
    assert wait_until(lambda: client.pubsub_numsub(channel)[0][1] >= processes), channel


def _each_gets_once(receivers: list, expected: str, marker: str) -> None:
    """Every receiver gets ``expected`` and then ``marker``: once each, nothing in between."""
    for receiver in receivers:
        got = [receiver.get(), receiver.get()] if isinstance(receiver, Peer) else receiver.next_events(2)
        assert [getattr(item, "data", item) for item in got] == [expected, marker], receiver


def test_a_stopped_servers_history_settings_never_silence_a_publish(processes, plain, redis_server, opened):
    """Issue 21: a history server stops, servers without history start: a Publisher's publish reaches them all."""
    topic = new_topic()
    first = processes()  # history_size 100 ...
    first.terminate()  # ... stopped: its settings stay in force for presence_ttl (a restart loses nothing)
    second, url = plain("--workers", "2")
    peers, pids = _peers_on(url, topic, 12)
    for peer in peers:
        opened(peer)
    stream, _, _ = open_stream(url, (topic,), ns="/ws/a")
    opened(stream)
    _wait_subscribed(redis_server, channel_name("syncws", None, topic), len(pids))
    with Publisher(redis_server.url) as publisher:
        assert publisher.publish(topic, "to everyone") >= 1
        publisher.publish(topic, "marker")
    _each_gets_once([*peers, stream], "to everyone", "marker")
    # the workers say that the servers disagree, and how
    assert wait_until(lambda: "disagree on history settings" in second.err), second.err
    assert re.search(r"this process has history_size=0 .* others have history_size=100 \(\d+ process", second.err)


def test_servers_with_and_without_history_each_deliver_a_publish_once(processes, plain, redis_server, opened):
    """Both kinds alive at once (a misconfiguration, logged): every subscriber gets each publish exactly once."""
    topic = new_topic()
    keeping = processes()
    other, plain_url = plain()
    here = [Peer(keeping, "a", (topic,)), Peer(plain_url, "a", (topic,)), Peer(plain_url, "b", (topic,))]
    for peer in here:
        opened(peer)
        peer.until_open()
    _wait_subscribed(redis_server, channel_name("syncws", "/ws/a", topic), 2)
    assert wait_until(lambda: "disagree on history settings" in other.err + keeping.err)
    time.sleep(0.2)  # both processes have read the other's announcement (the log line comes after)
    with Publisher(redis_server.url) as publisher:
        publisher.publish(topic, "from a job")
        publisher.publish(topic, "marker")
    _each_gets_once(here, "from a job", "marker")
    publish(keeping, topic, "from the history server")  # every namespace, stored
    publish(keeping, topic, "marker")
    _each_gets_once(here, "from the history server", "marker")
    assert [d for _, d in history(keeping, topic)] == ["from a job", "marker", "from the history server", "marker"]


def test_settings_of_servers_gone_longer_than_presence_ttl_are_ignored(tmp_path, opened):
    topic = new_topic()
    with RedisServer(tmp_path) as redis_server:  # its own: no other test's servers are alive in it
        first = HistoryProcess(redis_server.url, "--presence-ttl", "1")
        client = redis_server.client()
        try:
            assert wait_until(lambda: client.hvals("{syncws}:settings") == ["100 0"])
        finally:
            first.terminate()
        time.sleep(1.2)  # its announcement has expired
        second = SyncwsProcess(APP, "--port", "0", "--broker", redis_server.url, cwd=ROOT)
        try:
            peer = Peer(second.wait_for_url(), "a", (topic,))
            opened(peer)
            peer.until_open()
            _wait_subscribed(redis_server, channel_name("syncws", None, topic), 1)
            with Publisher(redis_server.url) as publisher:
                assert publisher.publish(topic, "live") == 1
            assert peer.get() == "live"
            assert client.keys("syncws:*:h:*") == []  # nothing stored with the stale settings
            assert client.hvals("{syncws}:settings") == ["0 0"]  # only the live server's settings remain
            assert "disagree" not in second.err
        finally:
            peer.close()
            second.terminate()
