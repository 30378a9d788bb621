"""Delivery and recovery (syncws/server/delivery.py): history, recovery and presence over real sockets, against both stores.

Every test runs twice: with the in-memory history of a server without a
broker, and with history in Redis Streams (a private redis-server, a broker
prefix per test).  The multi-process behaviours (a restarted server, a
second process, presence across processes) are in
``tests/pubsub/test_redis_history.py``.

"No duplicate and no gap" is checked against the stored history itself: what
a client received after its ``since`` must be exactly the stored entries
after ``since``, in their order.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid

import pytest

from syncws import ConfigurationError, Recovery
from syncws.pubsub.redis_broker import RedisBroker

from ..apps.history_app import app as history_app
from ..conftest import wait_until
from ..support import RedisServer, new_topic
from ..support.history import Peer, history, offsets_after, open_stream, presence, publish


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.slow)])
def serve_history(request, start_server):
    """``serve_history(**options)``: the history app with history on, in memory or on Redis."""

    def start(**options):
        options.setdefault("history_size", 100)
        if request.param == "redis":
            url = request.getfixturevalue("redis_url")
            broker = RedisBroker(url, prefix="h" + uuid.uuid4().hex[:8])
            server = start_server(history_app, broker=broker, **options)
            assert wait_until(lambda: broker.connected)
            return server
        return start_server(history_app, **options)

    start.backend = request.param
    return start


def wait_stored(server, topic, count, ns="/ws/a"):
    """Publishes are stored asynchronously (through the hub; on Redis, the relay thread)."""
    assert wait_until(lambda: len(history(server, topic, ns)) >= count, timeout=5), history(server, topic, ns)
    return history(server, topic, ns)


# -- SSE ------------------------------------------------------------------------------


def test_sse_resume_replays_exactly_the_missed_events_then_goes_live(serve_history, opened):
    server = serve_history()
    topic = new_topic()
    first, before, results = open_stream(server, (topic,))
    opened(first)
    assert before == [] and results[topic] == [False, 0, None]  # nothing stored yet, no Last-Event-ID
    for i in range(3):
        publish(server, topic, {"i": i}, ns="/ws/a")
    seen = first.next_events(3)
    assert [json.loads(e.data) for e in seen] == [{"i": 0}, {"i": 1}, {"i": 2}]
    ids = [e.last_event_id for e in seen]
    assert len(set(ids)) == 3 and all(ids)
    first.close()  # the client drops...
    for i in range(3, 8):
        publish(server, topic, {"i": i}, ns="/ws/a")  # ...and misses five
    stored = wait_stored(server, topic, 8)

    again, replayed, results = open_stream(server, (topic,), last_event_id=ids[-1])
    opened(again)
    assert [json.loads(e.data) for e in replayed] == [{"i": i} for i in range(3, 8)]
    assert [e.last_event_id for e in replayed] == [offset for offset, _ in stored[3:]]
    assert results[topic] == [True, 5, stored[-1][0]]
    publish(server, topic, "live", ns="/ws/a")
    live = again.next_event()
    assert live.data == "live" and live.last_event_id not in ids + [e.last_event_id for e in replayed]


def test_sse_without_history_has_no_ids_and_recovers_nothing(start_server, opened):
    server = start_server(history_app)  # history_size 0: the default
    topic = new_topic()
    stream, before, results = open_stream(server, (topic,), last_event_id="123-4")
    opened(stream)
    assert before == [] and results[topic] == [False, 0, None]
    publish(server, topic, "plain", ns="/ws/a")
    event = stream.next_event()
    assert (event.data, event.last_event_id) == ("plain", "")
    assert b"id:" not in bytes(stream.raw)
    assert history(server, topic) == []


def test_a_trimmed_history_is_not_recovered_and_the_retained_tail_is_replayed(serve_history, opened):
    server = serve_history(history_size=3)
    topic = new_topic()
    publish(server, topic, "zero", ns="/ws/a")
    oldest = wait_stored(server, topic, 1)[0][0]
    for word in ("one", "two", "three", "four"):
        publish(server, topic, word, ns="/ws/a")
    assert wait_until(lambda: [d for _, d in history(server, topic)] == ["two", "three", "four"])
    stream, replayed, results = open_stream(server, (topic,), last_event_id=oldest)
    opened(stream)
    assert [e.data for e in replayed] == ["two", "three", "four"]
    assert results[topic] == [False, 3, history(server, topic)[-1][0]]


@pytest.mark.parametrize(
    "last_event_id, tail",
    # An offset of a lost history gets the retained tail (recovered says False);
    # an id that is not an offset at all names no position and replays nothing
    # (before, it replayed the whole history: 230 KB for a 100-byte request).
    [("1-1", True), ("99999999999-0", True)]
    + [(g, False) for g in ("garbage", "-", "12-x", "ünïcode-1", "1-2-3", "9" * 80, "1-" + "9" * 75)],
)
def test_a_stale_offset_gets_the_retained_tail_and_garbage_gets_nothing(serve_history, opened, last_event_id, tail):
    server = serve_history()
    topic = new_topic()
    for word in ("a", "b"):
        publish(server, topic, word, ns="/ws/a")
    stored = wait_stored(server, topic, 2)
    stream, replayed, results = open_stream(server, (topic,), last_event_id=last_event_id)
    opened(stream)
    expected = ["a", "b"] if tail else []
    assert [e.data for e in replayed] == expected
    assert results[topic] == [False, len(expected), stored[-1][0]]
    publish(server, topic, "live", ns="/ws/a")
    assert [e.data for e in stream.next_events(1)] == ["live"]


def test_a_since_that_is_not_a_string_is_a_type_error(serve_history):
    server = serve_history()
    for since in ([1, 2], 12, {"a": 1}):
        with pytest.raises(TypeError, match="since must be an offset"):
            server.history(new_topic(), "/ws/a", since=since)


def test_an_offset_of_another_topic_is_stale(serve_history, opened):
    server = serve_history()
    topic, other = new_topic(), new_topic()
    publish(server, other, "elsewhere", ns="/ws/a")
    publish(server, topic, "here", ns="/ws/a")
    foreign = wait_stored(server, other, 1)[0][0]
    wait_stored(server, topic, 1)
    stream, replayed, results = open_stream(server, (topic,), last_event_id=foreign)
    opened(stream)
    assert [e.data for e in replayed] == ["here"] and results[topic][:2] == [False, 1]


def test_resuming_from_the_newest_offset_replays_nothing_and_is_recovered(serve_history, opened):
    server = serve_history()
    topic = new_topic()
    publish(server, topic, "only", ns="/ws/a")
    newest = wait_stored(server, topic, 1)[0][0]
    stream, replayed, results = open_stream(server, (topic,), last_event_id=newest)
    opened(stream)
    assert replayed == [] and results[topic] == [True, 0, newest]


def test_stream_since_overrides_last_event_id(serve_history, opened):
    server = serve_history()
    topic = new_topic()
    for word in ("a", "b", "c"):
        publish(server, topic, word, ns="/ws/a")
    stored = wait_stored(server, topic, 3)
    stream, replayed, results = open_stream(server, (topic,), last_event_id=stored[2][0], since=stored[0][0])
    opened(stream)
    assert [e.data for e in replayed] == ["b", "c"] and results[topic] == [True, 2, stored[2][0]]


# -- WebSocket ------------------------------------------------------------------------


def test_ws_since_replays_raw_messages_then_live_ones(serve_history, opened):
    server = serve_history()
    topic = new_topic()
    for i in range(4):
        publish(server, topic, {"i": i}, ns="/ws/a")
    stored = wait_stored(server, topic, 4)
    peer = Peer(server, "a", (topic,), since=stored[1][0])
    opened(peer)
    replay, hello = peer.until_open()
    assert [json.loads(m) for m in replay] == [{"i": 2}, {"i": 3}]
    assert hello["recovery"][topic] == [True, 2, stored[3][0]]
    publish(server, topic, b"\x00\xff", ns="/ws/a")
    assert peer.get() == b"\x00\xff"  # live, raw: binary stays binary


def test_ws_envelopes_carry_topic_offset_and_data_of_every_kind(serve_history, opened):
    server = serve_history()
    topic = new_topic()
    publish(server, topic, {"k": [1, "two"]}, ns="/ws/a")
    first = wait_stored(server, topic, 1)[0][0]
    peer = Peer(server, "a", (topic,), since=first, envelope="1")
    opened(peer)
    replay, hello = peer.until_open()
    assert replay == [] and hello["recovery"][topic] == [True, 0, first]
    for data in ('text with "quotes" and ünïcode', b"\x00\x01binary", 42, [1, 2]):
        publish(server, topic, data, ns="/ws/a")
    got = [json.loads(peer.get()) for _ in range(4)]
    stored = wait_stored(server, topic, 5)
    assert [g["offset"] for g in got] == [offset for offset, _ in stored[1:]]
    assert all(g["topic"] == topic for g in got)
    assert got[0]["data"] == 'text with "quotes" and ünïcode' and "encoding" not in got[0]
    assert got[1]["encoding"] == "base64" and base64.b64decode(got[1]["data"]) == b"\x00\x01binary"
    assert got[2]["data"] == 42 and got[3]["data"] == [1, 2]
    # a client that reconnects with the last envelope's offset resumes exactly there
    peer.close()
    publish(server, topic, "missed", ns="/ws/a")
    wait_stored(server, topic, 6)
    again = Peer(server, "a", (topic,), since=got[-1]["offset"], envelope="1")
    opened(again)
    replay, hello = again.until_open()
    assert [json.loads(m)["data"] for m in replay] == ["missed"]
    assert hello["recovery"][topic][:2] == [True, 1]


def test_a_peer_publish_is_stored_and_never_echoed_to_its_sender(serve_history, opened):
    server = serve_history()
    topic = new_topic()
    sender = Peer(server, "a", (topic,), envelope="1")
    other = Peer(server, "a", (topic,), envelope="1")
    for peer in (sender, other):
        opened(peer)
        peer.until_open()
    sender.send(op="pub", topic=topic, data={"from": "sender"})
    got = json.loads(other.get())
    assert got["data"] == {"from": "sender"} and got["offset"]
    assert history(server, topic) == [[got["offset"], {"from": "sender"}]]
    publish(server, topic, "marker", ns="/ws/a")  # ordering proves the sender got nothing before it
    assert json.loads(sender.get())["data"] == "marker"


# -- where a publish is stored -----------------------------------------------------------


def test_a_publish_without_namespace_goes_into_every_namespace_with_a_subscriber_or_a_history(serve_history, opened):
    server = serve_history()
    topic = new_topic()
    peer = Peer(server, "a", (topic,))  # /ws/a: a subscriber
    opened(peer)
    peer.until_open()
    publish(server, topic, "b only", ns="/ws/b")  # /ws/b: a history, no subscriber
    wait_stored(server, topic, 1, ns="/ws/b")
    publish(server, topic, "everyone")  # no namespace
    assert peer.get() == "everyone"
    a, b = wait_stored(server, topic, 1, "/ws/a"), wait_stored(server, topic, 2, "/ws/b")
    assert [d for _, d in a] == ["everyone"] and [d for _, d in b] == ["b only", "everyone"]
    assert history(server, topic, "/ws/c") == []  # neither: nothing stored there
    assert a[0][0] != b[1][0]  # each history numbers its own publishes


def test_server_history_since_and_limit(serve_history):
    server = serve_history()
    topic = new_topic()
    for i in range(6):
        publish(server, topic, i, ns="/ws/a")
    stored = wait_stored(server, topic, 6)
    assert [d for _, d in stored] == list(range(6))
    assert history(server, topic, since=stored[2][0]) == stored[3:]
    assert history(server, topic, limit=2) == stored[4:]
    assert history(server, topic, since=stored[1][0], limit=3) == stored[3:]
    assert history(server, topic, limit=0) == []
    assert history(server, new_topic()) == []
    with pytest.raises(ConfigurationError):
        server.history(topic, "/ws/a", limit=-1)
    with pytest.raises(ConfigurationError):
        server.history("", "/ws/a")


# -- races --------------------------------------------------------------------------------


def test_publishes_racing_the_subscribe_are_neither_lost_nor_repeated(serve_history, opened):
    """Thousands of publishes from three threads while clients keep resuming from offsets."""
    server = serve_history(history_size=10_000)
    topic = new_topic()
    publish(server, topic, {"start": True}, ns="/ws/a")
    start = wait_stored(server, topic, 1)[0][0]
    stop = threading.Event()
    # Half-way, the publishers wait for a first client to have resumed, so at
    # least one resume happens while they run, however slow the machine (under
    # coverage.py a connect can outlast all 3,000 publishes).
    first_resumed = threading.Event()

    def publisher(base: int) -> None:
        for i in range(base, base + 1000):
            if i == base + 500:
                first_resumed.wait(10)
            server.publish(topic, {"i": i}, namespace="/ws/a")
            if i % 50 == 0:
                threading.Event().wait(0.001)
        stop.set()

    threads = [threading.Thread(target=publisher, args=(base,)) for base in (0, 1000, 2000)]
    for thread in threads:
        thread.start()
    resumed = []  # (since, envelopes received, socket)
    since = start
    while not stop.is_set() or len(resumed) < 6:
        peer = Peer(server, "a", (topic,), since=since, envelope="1")
        opened(peer)
        replay, hello = peer.until_open()
        assert hello["recovery"][topic][0] is True
        resumed.append((since, [json.loads(m) for m in replay], peer))
        first_resumed.set()
        since = hello["recovery"][topic][2] or since
        if len(resumed) >= 12:
            break
    for thread in threads:
        thread.join(20)
    publish(server, topic, {"end": True}, ns="/ws/a")
    final = wait_stored(server, topic, 3002)
    assert len(final) == 3002
    overlapped = 0  # clients that got both a replay and live publishes from the threads
    for since, replay, peer in resumed:
        expected = offsets_after(final, since)
        got = replay[:]
        while not got or got[-1]["data"] != {"end": True}:
            got.append(json.loads(peer.get()))
        assert [g["offset"] for g in got] == [offset for offset, _ in expected]
        assert [g["data"] for g in got] == [data for _, data in expected]
        overlapped += bool(replay) and len(got) - len(replay) > 1
    assert overlapped, "no client resumed while the publishers were running"


# -- presence -------------------------------------------------------------------------------


def test_presence_lists_peers_with_their_info_and_streams_that_asked(serve_history, opened):
    server = serve_history()
    topic = new_topic()
    alice = Peer(server, "a", (topic,), info=json.dumps({"name": "alice"}))
    bob = Peer(server, "a", (topic,))  # no info: present with None
    elsewhere = Peer(server, "b", (topic,))
    quiet, _, _ = open_stream(server, (topic,))  # a stream is present only when it asks
    watcher, _, _ = open_stream(server, (topic,), info=json.dumps("dashboard"))
    ids = []
    for client in (alice, bob, elsewhere, quiet, watcher):
        opened(client)
    for peer in (alice, bob, elsewhere):
        ids.append(peer.until_open()[1]["id"])
    found = presence(server, topic, "/ws/a")
    infos = {entry["id"]: entry["info"] for entry in found["presence"]}
    assert infos[ids[0]] == {"name": "alice"} and infos[ids[1]] is None
    assert ids[2] not in infos and found["count"] == len(infos) == 3  # alice, bob, the watcher stream
    (stream_id,) = [i for i, info in infos.items() if info == "dashboard"]
    assert stream_id.startswith("sse-")
    everywhere = presence(server, topic)  # every namespace: /ws/b's peer too
    assert everywhere["count"] == 4 and {e["id"] for e in everywhere["presence"]} == set(ids) | {stream_id}
    alice.send(op="presence", topic=topic)
    assert {e["id"] for e in alice.get_json()["presence"]} == set(infos)
    bob.close()
    watcher.close()
    assert wait_until(lambda: presence(server, topic, "/ws/a")["count"] == 1), presence(server, topic, "/ws/a")
    assert presence(server, topic, "/ws/a")["presence"] == [{"id": ids[0], "info": {"name": "alice"}}]


def test_history_off_recovery_result_and_bad_topics(start_server, opened):
    server = start_server(history_app)
    topic = new_topic()
    peer = Peer(server, "a", (topic,), since="1-1")
    opened(peer)
    assert peer.until_open()[1]["recovery"][topic] == [False, 0, None]
    assert Recovery() == Recovery(recovered=False, replayed=0, offset=None)
    with pytest.raises(ConfigurationError):
        server.presence("")


def test_recovery_from_hooks_in_os_threads(serve_history, opened):
    """peer.subscribe(since=...) from a hook running in an OS thread: the replay is still exact."""
    server = serve_history(threads="on")
    topic = new_topic()
    for word in ("a", "b", "c"):
        publish(server, topic, word, ns="/ws/a")
    stored = wait_stored(server, topic, 3)
    peer = Peer(server, "a", (topic,), since=stored[0][0])
    opened(peer)
    replay, hello = peer.until_open()
    assert replay == ["b", "c"] and hello["recovery"][topic] == [True, 2, stored[2][0]]
    publish(server, topic, "live", ns="/ws/a")
    assert peer.get() == "live"


@pytest.mark.slow
def test_a_slow_recovery_holds_a_bounded_number_of_live_publishes(start_server, redis_url, opened):
    # While a recovery reads Redis, live publishes wait in a stand-in
    # subscriber; when reads hung it held 180,000 of them.  It keeps at most
    # history_size (at least 1,000): more publishes than that during one read
    # trim the history past ``since`` anyway, so recovered is False either way.
    broker = RedisBroker(redis_url, prefix="h" + uuid.uuid4().hex[:8])
    server = start_server(history_app, broker=broker, history_size=100)
    assert wait_until(lambda: broker.connected)
    topic = new_topic()
    publish(server, topic, "first", ns="/ws/a")
    since = wait_stored(server, topic, 1)[0][0]
    read = broker.read_history
    held = []

    def slow_read(*args, **kwargs):
        if kwargs.get("recovering"):
            for i in range(1500):  # Redis is slow; publishes go on meanwhile
                server.publish(topic, {"i": i}, namespace="/ws/a")
            assert wait_until(lambda: broker.relayed >= 1501, timeout=10)
            holders = [s for s in server.runtime.registry.subscribers(topic, "/ws/a") if hasattr(s, "held")]
            assert wait_until(lambda: holders[0].overflowed, timeout=10)  # the rest came back through Redis
            held.append(len(holders[0].held))
        return read(*args, **kwargs)

    broker.read_history = slow_read
    peer = Peer(server, "a", (topic,), since=since)
    opened(peer)
    _, hello = peer.until_open()
    assert held == [1000]
    assert hello["recovery"][topic][:2] == [False, 100]  # the stored tail, and recovered says what was lost
    publish(server, topic, "live", ns="/ws/a")
    assert peer.get() == "live"
