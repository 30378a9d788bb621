"""The Python channels client against real servers: reconnects, resumes, back-off, dead servers, revokes.

The connection is cut with a TCP proxy the test controls (``tests/support/proxy.py``).
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from syncws import Channels, Publisher
from syncws.base.errors import ClientClosed

from ..conftest import wait_until
from ..support import RedisServer, StallingProxy, SyncwsProcess

ROOT = Path(__file__).resolve().parents[2]
ANYTHING_GOES = Channels(authorize=lambda peer, action, topic: True)


def proxy_to(port: int) -> StallingProxy:
    return StallingProxy(port)


def ws_through(proxy: StallingProxy) -> str:
    return f"ws://127.0.0.1:{proxy.port}/_syncws"


@pytest.fixture
def proxies():
    made: list[StallingProxy] = []

    def make(port: int) -> StallingProxy:
        made.append(StallingProxy(port))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def test_a_dropped_connection_resumes_with_exactly_the_missed_publications(endpoint, clients, proxies):
    server, _, _ = endpoint(Channels(), history_size=1000)
    proxy = proxies(server.port)
    client = clients(ws_through(proxy))
    sub = client.subscribe("feed")
    server.publish("feed", "before", namespace="/_syncws")
    assert sub.get(5).data == "before"
    proxy.blackhole = True  # new connections hang until the test lets them through
    proxy.drop()
    assert wait_until(lambda: not server.peers)
    for n in range(50):
        server.publish("feed", n, namespace="/_syncws")
    proxy.blackhole = False
    assert wait_until(lambda: sub.resubscribes == 1, timeout=10)
    server.publish("feed", "live", namespace="/_syncws")
    received = [sub.get(5).data for _ in range(51)]
    assert received == [*range(50), "live"]
    assert sub.recovered and sub.replayed == 50
    with pytest.raises(TimeoutError):
        sub.get(0.3)  # nothing twice


def test_without_history_a_resume_says_it_was_not_recovered(endpoint, clients, proxies):
    server, _, _ = endpoint(Channels())
    proxy = proxies(server.port)
    client = clients(ws_through(proxy))
    sub = client.subscribe("feed")
    proxy.drop()
    assert wait_until(lambda: client.reconnects == 1, timeout=10)
    assert wait_until(lambda: server.peers and next(iter(server.peers)).topics == {"feed"})
    assert not sub.recovered
    server.publish("feed", "live")
    assert sub.get(5).data == "live"


def test_a_silent_server_is_noticed_and_replaced(endpoint, clients, proxies):
    server, _, _ = endpoint(Channels(heartbeat=0.3))
    proxy = proxies(server.port)
    client = clients(ws_through(proxy), heartbeat_grace=0.4)
    sub = client.subscribe("feed")
    proxy.stall()  # the connection stays open and carries nothing, as behind a dead NAT
    assert wait_until(lambda: client.reconnects == 1, timeout=5)
    assert wait_until(lambda: any(p.topics == {"feed"} for p in server.peers))
    server.publish("feed", "after")
    assert sub.get(5).data == "after"


def test_reconnects_back_off_with_jitter_and_stop_on_close():
    attempts: list[float] = []
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def refuse():  # accept, then drop at once: every attempt fails
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            attempts.append(time.monotonic())
            conn.close()

    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    from syncws.client import Client

    client = Client(f"ws://127.0.0.1:{listener.getsockname()[1]}/", timeout=1, backoff_base=0.05, backoff_cap=0.2)
    try:
        time.sleep(1.5)
        assert not client.closed
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert len(attempts) >= 5
        assert max(gaps) < 0.2 + 0.15  # never past the cap (plus scheduling)
        assert len({round(gap, 3) for gap in gaps}) > len(gaps) // 2  # jittered, not a fixed beat
        with pytest.raises(TimeoutError):
            client.wait_connected(0.1)
    finally:
        client.close()
        stop.set()
        thread.join(2)
        listener.close()
    seen = len(attempts)
    time.sleep(0.5)
    assert len(attempts) == seen
    with pytest.raises(ClientClosed):
        client.rpc("x")


def test_a_call_in_flight_when_the_connection_drops_fails_at_once(endpoint, clients, proxies):
    channels = Channels()
    release = threading.Event()
    channels.rpc("wait")(lambda peer, params: release.wait(5))
    server, _, _ = endpoint(channels)
    proxy = proxies(server.port)
    client = clients(ws_through(proxy))
    client.wait_connected(5)
    outcome: list = []

    def call():
        try:
            client.rpc("wait")
        except Exception as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.2)
    started = time.monotonic()
    proxy.drop()
    caller.join(5)
    release.set()
    assert isinstance(outcome[0], ConnectionError) and not isinstance(outcome[0], ClientClosed)
    assert time.monotonic() - started < 2


def test_iterating_a_subscription_ends_when_the_client_closes(endpoint, clients):
    _, url, _ = endpoint(ANYTHING_GOES)
    client = clients(url)
    sub = client.subscribe("t")
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(p.data for p in sub))
    reader.start()
    client.publish("t", 1)
    client.publish("t", 2)
    assert wait_until(lambda: got == [1, 2])
    client.close()
    reader.join(5)
    assert not reader.is_alive() and not sub.active


# -- across processes, with Redis ----------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


def start_app(redis_url: str, *flags: str) -> tuple[SyncwsProcess, str]:
    process = SyncwsProcess("tests.apps.channels_app:app", "--port", "0", "--broker", redis_url, *flags, cwd=ROOT)
    url = process.wait_for_url()
    assert wait_until(lambda: requests.get(url + "/stats", timeout=5).json()["connected"], timeout=10)
    return process, url


@pytest.mark.slow
def test_disconnect_and_unsubscribe_reach_the_user_on_another_process(redis_server, clients):
    redis_url = redis_server.url[:-1] + "4"
    (a, url_a), (b, url_b) = start_app(redis_url), start_app(redis_url)
    try:
        admin = clients(url_a.replace("http", "ws") + "/_syncws", token="admin")
        ann = clients(url_b.replace("http", "ws") + "/_syncws", token="ann")
        bob = clients(url_b.replace("http", "ws") + "/_syncws", token="bob")
        room = ann.subscribe("room")
        bobs = bob.subscribe("room")
        assert admin.rpc("kick", {"user": "ann", "topic": "room"}) is True
        assert wait_until(lambda: not room.active)
        assert bobs.active
        assert admin.rpc("ban", {"user": "ann"}) is True
        assert wait_until(lambda: ann.closed)
        assert (ann.close_code, ann.close_reason) == (4003, "banned")
        with Publisher(redis_url) as publisher:  # a job, outside any server
            assert publisher.disconnect("bob", "job ban") == 2
        assert wait_until(lambda: bob.closed)
        assert (bob.close_code, bob.close_reason) == (4003, "job ban")
        assert not admin.closed
    finally:
        a.kill()
        b.kill()


@pytest.mark.slow
def test_a_restarted_server_with_redis_history_resumes_the_client_without_loss(redis_server, clients, proxies):
    redis_url = redis_server.url[:-1] + "5"
    first, url = start_app(redis_url, "--history-size", "500")
    proxy = proxies(int(url.rsplit(":", 1)[1]))
    client = clients(ws_through(proxy), token="ann", backoff_cap=0.3)
    sub = client.subscribe("orders")
    client.publish("orders", "before")
    assert sub.get(5).data == "before"
    first.kill()  # a crash: no close frame
    with Publisher(redis_url) as publisher:
        for n in range(30):
            publisher.publish("orders", n)
        second, url = start_app(redis_url, "--history-size", "500")
        try:
            proxy.target_port = int(url.rsplit(":", 1)[1])
            assert wait_until(lambda: sub.resubscribes >= 1, timeout=15)
            assert [sub.get(5).data for _ in range(30)] == list(range(30))
            assert sub.recovered
            publisher.publish("orders", "live")
            assert sub.get(5).data == "live"
            with pytest.raises(TimeoutError):
                sub.get(0.3)
        finally:
            second.kill()


def test_a_callback_may_close_its_own_client(endpoint, clients, caplog):
    server, url, _ = endpoint(ANYTHING_GOES)
    client = clients(url)
    client.subscribe("t", on_publication=lambda publication: client.close())
    server.publish("t", "last")
    assert wait_until(lambda: client.closed)
    assert client.close_code is None
    assert "a callback failed" not in caplog.text  # (joining its own thread would raise)
