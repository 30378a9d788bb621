"""The Redis broker with a real redis-server, real server processes and real clients.

A module-scoped redis-server runs on a free port; two ``python -m syncws
tests.apps.broker_app:app --broker redis://...`` processes (A and B) share it.
Tests that kill Redis or stall its connections get a redis-server of their own.

Absence of a message is proven with ordering, not sleeps: every process has
one subscriber connection, Redis delivers to it in publish order, and a
process's relays leave in the order they were made; so once a later "marker"
has arrived, an earlier message that should not have come would have come
before it.  Before publishing, a test waits until Redis shows the interest it
expects (PUBSUB NUMSUB), because a local subscribe reaches Redis a moment later.

redis-server must be installed (scripts/test installs it): without it these
tests fail, they are never skipped.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import queue
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from syncws import Publisher
from syncws.base.options import BY_NAME
from syncws.pubsub.broker import channel_name
from syncws.pubsub.redis_broker import RedisBroker

from ..apps.broker_app import app as broker_app
from ..conftest import wait_until
from ..support import QueuedWebSocket, RedisServer, SyncwsProcess, free_port, new_topic, subprocess_env
from ..support.proxy import StallingProxy

ENV_VAR = BY_NAME["broker"].env_var

pytestmark = pytest.mark.slow  # subprocesses, browsers, Redis or load: not in the fast loop

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.broker_app:app"
PREFIX = "syncws"  # the default prefix, as the subprocess servers use it


# -- helpers --------------------------------------------------------------------------


def ch(namespace: str | None, topic: str, prefix: str = PREFIX) -> str:
    return channel_name(prefix, namespace, topic)


def numsub(r: redis.Redis, *channels: str) -> dict:
    return dict(r.pubsub_numsub(*channels))


def wait_numsub(r: redis.Redis, expected: dict, timeout: float = 5.0) -> None:
    """Wait until Redis shows exactly ``expected`` subscriber counts per channel."""
    ok = wait_until(lambda: numsub(r, *expected) == expected, timeout=timeout, interval=0.02)
    assert ok, f"PUBSUB NUMSUB is {numsub(r, *expected)}, expected {expected}"


def topic_channels(r: redis.Redis, topic: str, prefix: str = PREFIX) -> set:
    return set(r.pubsub_channels(f"{prefix}:{{{topic}}}:*"))


def pubsub_clients(r: redis.Redis) -> list:
    return r.client_list(_type="pubsub")


class ServerProcess(SyncwsProcess):
    """``python -m syncws tests.apps.broker_app:app --port 0 --broker URL`` in its own process."""

    def __init__(self, name: str, broker_url: str) -> None:
        self.name = name
        self.url: str | None = None
        super().__init__(APP, "--port", "0", "--broker", broker_url, cwd=ROOT)

    def wait_ready(self) -> ServerProcess:
        self.url = self.wait_for_url()
        return self

    def output(self) -> str:
        return self.out + self.err

    def stats(self) -> dict:
        assert self.url is not None, "not ready"
        return requests.get(self.url + "/stats", timeout=5).json()

    def __repr__(self) -> str:
        return f"<{self.name} {self.url}>"


def start_processes(broker_url: str, *names: str) -> list:
    procs = [ServerProcess(name, broker_url) for name in names]  # in parallel
    for proc in procs:
        proc.wait_ready()
    for proc in procs:
        assert wait_until(functools.partial(_connected, proc), timeout=10), f"{proc} never reached Redis"
    return procs


def _connected(proc: ServerProcess) -> bool:
    return bool(proc.stats()["connected"])


def base_url(target: Any) -> str:
    return target.url  # a ServerProcess or an in-process Server


class Client(QueuedWebSocket):
    """A peer of the broker app; its open ack is read at once (``id``)."""

    def __init__(self, target: Any, path: str = "/_ws", subs: tuple = ()) -> None:
        query = ("?" + "&".join(f"sub={t}" for t in subs)) if subs else ""
        url = base_url(target).replace("http://", "ws://", 1) + path + query
        super().__init__(url, f"{path}@{base_url(target)}")
        hello = self.get_json()
        assert hello["ack"] == "open", hello
        self.id = hello["id"]

    def pub(self, topic: str, data: Any = None, *, b64: bytes | None = None) -> None:
        """peer.publish on the server, without an ack (a marker proves arrival)."""
        if b64 is not None:
            self.send(op="pub", topic=topic, b64=base64.b64encode(b64).decode(), ack=False)
        else:
            self.send(op="pub", topic=topic, data=data, ack=False)

    def expect(self, *values: Any, timeout: float = 5.0) -> None:
        """The next messages are exactly ``values``, in order."""
        for value in values:
            got = self.get(timeout)
            assert got == value, f"{self.name}: expected {value!r}, got {got!r}"

    def pending(self) -> list:
        items = []
        while True:
            try:
                items.append(self.queue.get_nowait())
            except queue.Empty:
                return items

    def close(self) -> None:
        try:
            self.ws.send_close()
        except Exception:
            pass
        self.closed.wait(2)
        self.ws.shutdown()


class SSEClient:
    """GET /events?topic=...&ns=... over HTTP/1.0; a reader thread queues each event's data."""

    def __init__(self, target: Any, topics: tuple, namespace: str) -> None:
        host, port = base_url(target).removeprefix("http://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        query = "&".join([f"topic={t}" for t in topics] + [f"ns={namespace}"])
        self.sock.sendall(f"GET /events?{query} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
        self.sock.settimeout(None)
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        event, data = self.get_event()
        assert (event, data) == ("ready", namespace)

    def _read(self) -> None:
        buf = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if buf.startswith(b"HTTP/"):
                    if b"\r\n\r\n" not in buf:
                        continue
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    assert b"text/event-stream" in head, head
                while b"\n\n" in buf:
                    block, _, buf = buf.partition(b"\n\n")
                    event, data = "message", []
                    for line in block.decode("utf-8").split("\n"):
                        name, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if name == "event":
                            event = value
                        elif name == "data":
                            data.append(value)
                    self.queue.put((event, "\n".join(data)))
        except OSError:
            pass

    def get_event(self, timeout: float = 5.0) -> tuple:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"SSE: no event in {timeout} s") from None

    def expect(self, *datas: str) -> None:
        for data in datas:
            assert self.get_event() == ("message", data)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# -- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server for this test alone (to kill, restart or proxy)."""
    with RedisServer(tmp_path) as server:
        yield server


@pytest.fixture
def r(redis_server):
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture(scope="module")
def cluster(redis_server):
    """Server processes A and B sharing the module's redis-server."""
    procs = start_processes(redis_server.url, "A", "B")
    yield procs
    for proc in procs:
        proc.terminate()


@pytest.fixture
def clients():
    """Open clients (WebSocket or SSE) with ``clients(cls, *args)``; all closed at teardown."""
    opened: list = []

    def open_(cls=Client, *args, **kwargs):
        client = cls(*args, **kwargs)
        opened.append(client)
        return client

    yield open_
    for client in opened:
        client.close()


@pytest.fixture
def local_server(start_server):
    """``local_server(**options)``: the broker app in-process (serve(background=True)), stopped at teardown."""
    return functools.partial(start_server, broker_app)


# -- across processes ---------------------------------------------------------------


def test_a_peer_publish_on_a_reaches_b_and_never_the_sender(cluster, clients, r):
    A, B = cluster
    topic = new_topic()
    sender = clients(Client, A, "/rooms/x", (topic,))
    a_other = clients(Client, A, "/rooms/x", (topic,))
    b1 = clients(Client, B, "/rooms/x", (topic,))
    b2 = clients(Client, B, "/rooms/x", (topic,))
    # one subscription per process and channel, however many clients
    wait_numsub(r, {ch("/rooms/x", topic): 2, ch(None, topic): 2})

    sender.pub(topic, "hello from A")
    b1.expect("hello from A")
    b2.expect("hello from A")
    a_other.expect("hello from A")  # locally

    # B's marker travels the same channel as A's publish: A's subscriber got
    # its own relayed copy first (and dropped it), so the sender sees only the
    # marker and the other peer on A sees the publish exactly once.
    b1.pub(topic, "marker from B")
    sender.expect("marker from B")
    a_other.expect("marker from B")
    b2.expect("marker from B")
    # ... and b1, the sender of the marker, does not get it back either.
    a_other.pub(topic, "marker from A")
    b1.expect("marker from A")
    b2.expect("marker from A")
    sender.expect("marker from A")
    assert a_other.pending() == []


def test_namespaces_stay_isolated_across_processes(cluster, clients, r):
    A, B = cluster
    topic = new_topic()
    a_in_a = clients(Client, A, "/rooms/a", (topic,))
    a_in_b = clients(Client, A, "/rooms/b", (topic,))
    b_in_a = clients(Client, B, "/rooms/a", (topic,))
    b_in_b = clients(Client, B, "/rooms/b", (topic,))
    wait_numsub(r, {ch("/rooms/a", topic): 2, ch("/rooms/b", topic): 2, ch(None, topic): 2})

    a_in_a.pub(topic, "for room a")
    b_in_a.expect("for room a")
    a_in_b.pub(topic, "for room b")
    b_in_b.expect("for room b")  # first: "for room a" never reached room b on B
    b_in_b.pub(topic, "b answers")
    a_in_b.expect("b answers")  # first: room a's publish did not reach room b on A either
    b_in_a.pub(topic, "a answers")
    a_in_a.expect("a answers")  # first: nothing of room b reached room a on A
    a_in_a.pub(topic, "end a")
    b_in_a.expect("end a")  # nothing of room b reached room a on B
    for client in (a_in_a, a_in_b, b_in_a, b_in_b):
        assert client.pending() == []


def test_binary_json_and_text_payloads_survive_the_trip(cluster, clients, r):
    A, B = cluster
    topic = new_topic()
    a1 = clients(Client, A, "/_ws", (topic,))
    b1 = clients(Client, B, "/_ws", (topic,))
    wait_numsub(r, {ch("/_ws", topic): 2})

    every_byte = bytes(range(256)) * 3
    a1.pub(topic, b64=every_byte)
    got = b1.get()
    assert isinstance(got, bytes) and got == every_byte  # a binary frame, byte for byte
    a1.pub(topic, b64=b"")
    assert b1.get() == b""
    a1.pub(topic, b64=b"\n\n{}")  # looks like an envelope separator and JSON: still bytes
    assert b1.get() == b"\n\n{}"

    value = {"msg": "héllo 🙂", "n": [1, 2.5, None], "ok": True, "nested": {"a": "b\nc"}}
    a1.pub(topic, value)
    text = b1.get()
    assert isinstance(text, str)  # JSON travels as a text frame, written compactly
    assert text == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert json.loads(text) == value
    for data, expected in [
        ([1, "x"], '[1,"x"]'),
        (42, "42"),
        (True, "true"),
        (None, ""),
        ("", ""),
        ("multi\nline\r\ntext", "multi\nline\r\ntext"),
        ("\u0000nul", "\u0000nul"),
    ]:
        a1.pub(topic, data)
        assert b1.get() == expected
    # and the other way round
    b1.pub(topic, b64=b"\xff\x00from B")
    assert a1.get() == b"\xff\x00from B"
    b1.pub(topic, {"from": "B"})
    assert a1.get() == '{"from":"B"}'


def test_server_publish_without_namespace_reaches_every_namespace_on_the_other_process(cluster, clients, r):
    A, B = cluster
    topic, other = new_topic(), new_topic()
    a_pub = clients(Client, A, "/rooms/p")  # subscribed to nothing: A has no interest
    b_x = clients(Client, B, "/rooms/x", (topic,))
    b_y = clients(Client, B, "/rooms/y", (topic,))
    b_z = clients(Client, B, "/rooms/z", (other,))
    sse = clients(SSEClient, B, (topic,), "/feeds/s")
    wait_numsub(
        r,
        {
            ch(None, topic): 1,
            ch("/rooms/x", topic): 1,
            ch("/rooms/y", topic): 1,
            ch("/feeds/s", topic): 1,
            ch(None, other): 1,
        },
    )

    a_pub.send(op="server-pub", topic=topic, data="to everyone", namespace=None)
    assert a_pub.get_json()["ack"] == "server-pub"
    b_x.expect("to everyone")
    b_y.expect("to everyone")
    sse.expect("to everyone")

    a_pub.send(op="server-pub", topic=topic, data="only y", namespace="/rooms/y")
    b_y.expect("only y")
    a_pub.send(op="server-pub", topic=topic, data={"to": "everyone again"}, namespace=None)
    b_x.expect('{"to":"everyone again"}')  # first: "only y" did not reach /rooms/x
    b_y.expect('{"to":"everyone again"}')
    sse.expect('{"to":"everyone again"}')  # nor the stream of /feeds/s
    a_pub.send(op="server-pub", topic=other, data="other topic", namespace=None)
    b_z.expect("other topic")  # first: /rooms/z (another topic) got none of the above
    # server.publish delivers locally too, but a_pub subscribed to nothing: only its acks
    assert [a_pub.get_json() for _ in range(3)] == [{"ack": "server-pub", "topic": t} for t in (topic, topic, other)]
    for client in (a_pub, b_x, b_y, b_z):
        assert client.pending() == []


def test_sse_stream_on_b_receives_publishes_from_a(cluster, clients, r):
    A, B = cluster
    topic = new_topic()
    sse = clients(SSEClient, B, (topic,), "/rooms/s")
    a_peer = clients(Client, A, "/rooms/s")  # same namespace as the stream, publishes only
    a_elsewhere = clients(Client, A, "/rooms/elsewhere")
    wait_numsub(r, {ch("/rooms/s", topic): 1, ch(None, topic): 1})

    a_peer.pub(topic, "hello stream")
    sse.expect("hello stream")
    a_peer.pub(topic, {"k": [1, 2]})
    sse.expect('{"k":[1,2]}')
    a_peer.pub(topic, "two\nlines")
    sse.expect("two\nlines")
    a_peer.pub(topic, b64=b"\x00\xff")
    sse.expect(base64.b64encode(b"\x00\xff").decode())  # binary becomes base64 data
    a_elsewhere.pub(topic, "other namespace")  # not the stream's namespace
    # the marker from the same connection, so it is relayed after that publish
    a_elsewhere.send(op="server-pub", topic=topic, data="from server.publish on A", namespace=None, ack=False)
    sse.expect("from server.publish on A")  # first: the other namespace's publish did not come
    a_peer.send(op="server-pub", topic=topic, data="to /rooms/s", namespace="/rooms/s")
    sse.expect("to /rooms/s")


def test_publisher_in_a_plain_process_reaches_clients_on_a_and_b(cluster, clients, r, redis_server):
    A, B = cluster
    topic = new_topic()
    a_x = clients(Client, A, "/rooms/x", (topic,))
    b_x = clients(Client, B, "/rooms/x", (topic,))
    b_y = clients(Client, B, "/rooms/y", (topic,))
    sse = clients(SSEClient, A, (topic,), "/rooms/y")
    wait_numsub(r, {ch(None, topic): 2, ch("/rooms/x", topic): 2, ch("/rooms/y", topic): 2})

    script = textwrap.dedent(
        """
        import json, socket, sys, threading
        from syncws import Publisher

        url, topic = sys.argv[1], sys.argv[2]
        with Publisher(url) as publisher:
            counts = [
                publisher.publish(topic, {"from": "cron", "n": 1}),
                publisher.publish(topic, "only x", namespace="/rooms/x"),
                publisher.publish(topic, b"\\x00\\x01\\xfe"),
            ]
        print(json.dumps({
            "counts": counts,
            "socket": socket.socket.__module__,
            "threads": threading.active_count(),
        }))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, redis_server.url, topic],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["counts"] == [2, 2, 2]  # Redis' receivers: one subscriber connection per process
    assert report["socket"] == "socket"  # plain, un-patched sockets
    assert report["threads"] == 1  # no helper thread either

    for client in (a_x, b_x):
        client.expect('{"from":"cron","n":1}', "only x", b"\x00\x01\xfe")
    b_y.expect('{"from":"cron","n":1}', b"\x00\x01\xfe")  # "only x" skipped /rooms/y
    sse.expect('{"from":"cron","n":1}', base64.b64encode(b"\x00\x01\xfe").decode())


def test_publisher_counts_receiving_processes_and_checks_topics(cluster, clients, r, redis_server):
    topic = new_topic()
    with Publisher(redis_server.url) as publisher:
        assert publisher.publish(topic, "nobody listens") == 0
        with pytest.raises(ValueError):
            publisher.publish("", "x")
        with pytest.raises(ValueError):
            publisher.publish(None, "x")
        with pytest.raises(TypeError):
            publisher.publish(topic, object())
        b1 = clients(Client, cluster[1], "/_ws", (topic,))
        wait_numsub(r, {ch(None, topic): 1})
        assert publisher.publish(topic, "now B listens") == 1
        b1.expect("now B listens")


def test_redis_subscriptions_follow_local_interest(cluster, clients, r):
    A, B = cluster
    topic = new_topic()
    x, y, alls = ch("/rooms/x", topic), ch("/rooms/y", topic), ch(None, topic)
    assert topic_channels(r, topic) == set()
    # A and B hold one subscriber connection each (other tests' servers are gone)
    assert wait_until(lambda: len(pubsub_clients(r)) == 2), pubsub_clients(r)

    a1 = clients(Client, A, "/rooms/x", (topic,))  # the first subscriber on A
    assert wait_until(lambda: topic_channels(r, topic) == {x, alls})
    wait_numsub(r, {x: 1, alls: 1})
    a2 = clients(Client, A, "/rooms/x", (topic,))
    b_clients = [clients(Client, B, "/rooms/x", (topic,)) for _ in range(3)]
    b_y = clients(Client, B, "/rooms/y", (topic,))
    wait_numsub(r, {x: 2, alls: 2, y: 1})
    assert topic_channels(r, topic) == {x, y, alls}
    # still one subscriber connection per process, never one per client
    assert len(pubsub_clients(r)) == 2

    a1.close()  # a2 still holds A's interest
    assert wait_until(lambda: A.stats()["peers"] == 1)
    # a1 is gone from A's registry, and A still wants both channels: no UNSUBSCRIBE
    assert {x, alls} <= set(A.stats()["channels"])
    wait_numsub(r, {x: 2, alls: 2, y: 1})

    a2.close()  # the last subscriber on A leaves
    wait_numsub(r, {x: 1, alls: 1, y: 1})
    b_y.send(op="unsub", topic=topic)  # leaving by unsubscribing, not by disconnecting
    assert b_y.get_json()["ack"] == "unsub"
    wait_numsub(r, {x: 1, alls: 1, y: 0})
    assert topic_channels(r, topic) == {x, alls}
    b_y.send(op="sub", topic=topic)  # and coming back
    wait_numsub(r, {x: 1, alls: 1, y: 1})
    for client in b_clients[:-1]:
        client.close()
    b_y.close()
    wait_numsub(r, {x: 1, alls: 1, y: 0})
    b_clients[-1].close()
    assert wait_until(lambda: topic_channels(r, topic) == set()), topic_channels(r, topic)

    # an SSE stream counts as interest too
    sse = SSEClient(B, (topic,), "/feeds/z")
    wait_numsub(r, {ch("/feeds/z", topic): 1, alls: 1})
    sse.close()
    assert wait_until(lambda: topic_channels(r, topic) == set()), topic_channels(r, topic)
    assert len(pubsub_clients(r)) == 2
    for proc in cluster:
        assert proc.stats()["connected"] is True


def test_order_per_publisher_connection_is_kept_across_processes(cluster, clients, r):
    A, B = cluster
    topic = new_topic()
    p1 = clients(Client, A, "/rooms/o")
    p2 = clients(Client, A, "/rooms/o")
    receiver = clients(Client, B, "/rooms/o", (topic,))
    sse = clients(SSEClient, B, (topic,), "/rooms/o")
    wait_numsub(r, {ch("/rooms/o", topic): 1})

    for i in range(100):
        p1.pub(topic, f"p1:{i}")
        p2.pub(topic, f"p2:{i}")
    got = [receiver.get() for _ in range(200)]
    streamed = [sse.get_event()[1] for _ in range(200)]
    for messages in (got, streamed):
        assert [m for m in messages if m.startswith("p1:")] == [f"p1:{i}" for i in range(100)]
        assert [m for m in messages if m.startswith("p2:")] == [f"p2:{i}" for i in range(100)]
    assert receiver.pending() == []


def test_malformed_relayed_messages_are_dropped_and_the_subscriber_survives(cluster, clients, r, redis_server):
    B = cluster[1]
    topic = new_topic()
    b1 = clients(Client, B, "/_ws", (topic,))
    wait_numsub(r, {ch("/_ws", topic): 1, ch(None, topic): 1})
    raw = redis_server.client()
    for garbage in [b"garbage", b"\n", b'{"v":9}\nx', b'{"v":1,"o":"x","n":null,"t":"t","b":false}\n\xff\xfe']:
        assert raw.publish(ch(None, topic), garbage) == 1
    raw.close()
    with Publisher(redis_server.url) as publisher:
        publisher.publish(topic, "valid")
    b1.expect("valid")  # the first thing received: the bad ones were dropped
    assert not b1.closed.is_set()
    assert B.proc.poll() is None


def test_in_process_servers_configured_by_url_and_environment(
    local_server, clients, r, redis_server, monkeypatch, cluster
):
    """serve(broker=URL) and SYNCWS_BROKER build Redis brokers with their own origins."""
    B = cluster[1]
    by_url = local_server(broker=redis_server.url)
    monkeypatch.setenv(ENV_VAR, redis_server.url)
    by_env = local_server()
    monkeypatch.delenv(ENV_VAR)
    for server in (by_url, by_env):
        assert isinstance(server.broker, RedisBroker)
        assert wait_until(lambda server=server: server.broker.connected)
    assert by_url.broker.origin != by_env.broker.origin

    topic = new_topic()
    u = clients(Client, by_url, "/_ws", (topic,))
    e = clients(Client, by_env, "/_ws", (topic,))
    b = clients(Client, B, "/_ws", (topic,))
    wait_numsub(r, {ch("/_ws", topic): 3, ch(None, topic): 3})
    assert by_url.broker.channels == {ch("/_ws", topic), ch(None, topic)}

    u.pub(topic, "from url server")
    e.expect("from url server")
    b.expect("from url server")
    by_env.publish(topic, "from env server")  # server.publish: every subscriber, everywhere
    e.expect("from env server")
    u.expect("from env server")  # first: u never got its own publish back
    b.expect("from env server")
    for client in (u, e, b):
        assert client.pending() == []


# -- Redis goes away ------------------------------------------------------------------


def test_redis_killed_and_restarted_local_delivery_never_stops_and_relaying_resumes(
    own_redis, local_server, clients, caplog
):
    """kill -9 redis-server mid-test, then restart it on the same port."""
    errors: list = []
    caplog.set_level(logging.INFO, logger="syncws.broker")
    broker = RedisBroker(own_redis.url, on_broker_error=errors.append)
    A = local_server(broker=broker)
    (B,) = start_processes(own_redis.url, "B")
    try:
        topic, late = new_topic(), new_topic()
        r = own_redis.client()
        a1 = clients(Client, A, "/_ws", (topic,))
        a2 = clients(Client, A, "/_ws", (topic,))
        b1 = clients(Client, B, "/_ws", (topic,))
        wait_numsub(r, {ch("/_ws", topic): 2, ch(None, topic): 2})
        a1.pub(topic, "before")
        a2.expect("before")
        b1.expect("before")
        assert errors == []

        own_redis.kill()
        assert wait_until(lambda: not broker.connected and errors, timeout=5), "the outage went unnoticed"

        # The outage (a couple of seconds, so that the subscriber fails several
        # reconnection attempts): local delivery carries on, promptly, message
        # after message.
        outage_started = time.monotonic()
        i = 0
        while time.monotonic() - outage_started < 2.0:
            started = time.monotonic()
            a1.pub(topic, f"during {i}")
            a2.expect(f"during {i}")
            assert time.monotonic() - started < 1.0
            i += 1
            time.sleep(0.02)
        # interest that appears during the outage is subscribed once Redis is back
        a3 = clients(Client, A, "/rooms/late", (late,))
        clients(Client, A, "/rooms/late").pub(late, "late, locally")
        a3.expect("late, locally")
        # reported once per outage and per connection (subscriber, relay), logged likewise
        assert len(errors) == 2, errors
        assert all(isinstance(e, (redis.RedisError, OSError)) for e in errors), errors
        warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
        assert len(warnings) == 2, warnings
        assert any("relay failed" in w for w in warnings) and any("subscriber failed" in w for w in warnings)
        assert broker.dropped >= 1  # a publish during the outage was dropped, not queued
        with pytest.raises(redis.exceptions.ConnectionError):
            Publisher(own_redis.url).publish(topic, "nobody can hear this")

        own_redis.start()  # the same port
        restarted = time.monotonic()
        r = own_redis.client()
        # every current channel is subscribed again, on both processes
        wait_numsub(
            r, {ch("/_ws", topic): 2, ch(None, topic): 2, ch("/rooms/late", late): 1, ch(None, late): 1}, timeout=15
        )
        assert wait_until(lambda: broker.connected, timeout=15)
        assert wait_until(lambda: B.stats()["connected"], timeout=15)

        # A -> B flows again.  Delivery is at-most-once: what was published
        # during the outage is gone, and a relay may still be backing off, so
        # publish until one arrives.
        deadline = restarted + 15
        received = None
        i = 0
        while received is None and time.monotonic() < deadline:
            a1.pub(topic, f"after {i}")
            a2.expect(f"after {i}")  # local delivery, as always
            try:
                received = b1.get(timeout=0.5)
            except AssertionError:
                i += 1
        assert received is not None and received.startswith("after "), received
        # B -> A, including the channel that A subscribed to during the outage
        b1.pub(topic, "from B")
        a1.expect("from B")
        b_late = clients(Client, B, "/rooms/late")
        b_late.pub(late, "late topic from B")
        a3.expect("late topic from B")
        assert time.monotonic() - restarted < 15
        a2.pending()
        assert not any(m.startswith("during") for m in b1.pending())  # never replayed
        with Publisher(own_redis.url) as publisher:
            assert publisher.publish(topic, "publisher again") == 2
        a1.expect("publisher again")
        b1.expect("publisher again")
        assert "Redis broker subscriber failed" in B.output()  # logged by the other process too
        assert len(errors) == 2, errors  # nothing new once Redis was back
        infos = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.INFO]
        assert any("subscriber reconnected" in m for m in infos) and any("relay is back" in m for m in infos)
        r.close()
    finally:
        B.terminate()


def test_a_server_stops_promptly_while_redis_is_unreachable(local_server):
    """A subscriber backing off between reconnection attempts does not hold up stop()."""
    errors: list = []
    broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0", on_broker_error=errors.append)
    server = local_server(broker=broker)
    assert wait_until(lambda: errors, timeout=5)
    time.sleep(2.0)  # the backoff has grown past a second by now
    started = time.monotonic()
    server.stop(timeout=1)
    assert time.monotonic() - started < 1.0
    # reported once per connection for the whole outage (the subscriber's, and the relay's, which
    # announces the server's settings at start), not per attempt
    assert len(errors) == 2


class TrackingBroker(RedisBroker):
    """Records every change of ``connected``, so a short False is never missed."""

    @property
    def connected(self) -> bool:
        return self._connected

    @connected.setter
    def connected(self, value: bool) -> None:
        history = self.__dict__.setdefault("history", [])
        if not history or history[-1] != value:
            history.append(value)
        self._connected = value


@pytest.fixture
def proxy(redis_server, local_server, clients):
    """A StallingProxy to the module's redis-server, closed before the test's servers and clients are."""
    proxy = StallingProxy(redis_server.port)
    yield proxy
    proxy.close()


@pytest.fixture
def health_checked_peer(r, local_server, clients):
    """``health_checked_peer(broker_class, url, interval)``: an in-process server whose broker (of
    ``broker_class``, a prefix of its own, a health check every ``interval`` s) connects to ``url``, and
    one peer subscribed to a new topic; returned once Redis shows the subscription as
    ``(broker, errors, topic, peer)``, ``errors`` being what ``on_broker_error`` got.
    """

    def start(broker_class: type[RedisBroker], url: str, interval: float) -> tuple:
        errors: list = []
        prefix = "hc" + uuid.uuid4().hex[:8]
        broker = broker_class(url, prefix=prefix, health_check_interval=interval, on_broker_error=errors.append)
        topic = new_topic()
        peer = clients(Client, local_server(broker=broker), "/_ws", (topic,))
        wait_numsub(r, {ch(None, topic, prefix): 1})
        return broker, errors, topic, peer

    return start


def test_a_silently_dead_subscriber_connection_is_detected_and_replaced(redis_server, r, proxy, health_checked_peer):
    broker, errors, topic, peer = health_checked_peer(TrackingBroker, proxy.url, 0.5)
    with Publisher(redis_server.url, prefix=broker.prefix) as publisher:
        publisher.publish(topic, "one")
        peer.expect("one")
        # the subscriber, and the relay connection that wrote the peer's presence
        assert broker.connected and wait_until(lambda: proxy.accepted == 2), proxy.accepted
        assert broker.history == [False, True] and errors == []

        stalled_at = time.monotonic()
        proxy.stall()  # the connection stays open, but nothing comes back any more
        assert wait_until(lambda: errors and broker.connected and proxy.accepted >= 3, timeout=6), (
            errors,
            broker.connected,
            proxy.accepted,
        )
        detected = time.monotonic() - stalled_at
        assert broker.history == [False, True, False, True]  # connected went False, then True again
        assert "health check" in str(errors[0])
        assert detected < 4  # ~2 x interval, plus backoff
        # the new connection is subscribed (Redis still counts the frozen one too)
        wait_numsub(r, {ch(None, topic, broker.prefix): 2})
        publisher.publish(topic, "two")
        peer.expect("two")  # delivery resumed, exactly once
        publisher.publish(topic, "three")
        peer.expect("three")
        assert peer.pending() == []


def test_a_reconnection_that_hangs_is_given_up_and_retried(redis_server, r, proxy, health_checked_peer):
    """Redis accepts the TCP connection but never answers: the broker must not wait forever."""
    broker, errors, topic, peer = health_checked_peer(TrackingBroker, proxy.url, 0.5)
    assert wait_until(lambda: proxy.accepted == 2)  # the subscriber and the relay (it wrote the peer's presence)
    proxy.blackhole = True  # from now on, connections are accepted and never answered
    proxy.stall()
    first = proxy.accepted
    assert wait_until(lambda: errors and proxy.accepted > first, timeout=5), (errors, proxy.accepted)
    time.sleep(0.5)  # the reconnection is now stuck in its handshake
    assert not broker.connected
    proxy.blackhole = False  # the network heals: new connections get through again
    healed = time.monotonic()
    assert wait_until(lambda: broker.connected, timeout=10), f"never reconnected ({proxy.accepted} attempts)"
    assert time.monotonic() - healed < 5
    wait_numsub(r, {ch(None, topic, broker.prefix): 2})  # the live one, and the frozen first one
    with Publisher(redis_server.url, prefix=broker.prefix) as publisher:
        publisher.publish(topic, "after the hang")
    peer.expect("after the hang")


def test_a_subscriber_with_nothing_to_say_is_not_dropped_by_the_health_check(redis_server, r, health_checked_peer):
    """Idle but alive: pings are answered, the connection is kept."""
    broker, errors, topic, peer = health_checked_peer(RedisBroker, redis_server.url, 0.2)
    before = {c["id"] for c in pubsub_clients(r)}
    time.sleep(1.5)  # several health-check intervals with no traffic
    assert errors == [] and broker.connected
    assert {c["id"] for c in pubsub_clients(r)} == before  # the same connection
    with Publisher(redis_server.url, prefix=broker.prefix) as publisher:
        publisher.publish(topic, "still here")
    peer.expect("still here")
