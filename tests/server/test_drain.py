"""The drain a deploy needs: readiness first, then 503s for newcomers, then 1012s spread over the period.

In process: the order of the steps, their timing and what each kind of
connection gets.  In subprocesses: SIGTERM does it, and the load test puts
2,000 channels clients on two instances behind a TCP balancer, drains one,
and checks that the reconnects were spread and that nobody lost a message.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import functools
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import gevent
import pytest
import requests
import websocket

from syncws import App, create_event_stream, define_websocket_handler
from syncws.base.errors import ConfigurationError

from ..conftest import connect, wait_until
from ..support import RedisServer, SyncwsRunner, recv_close
from ..support.balancer import Balancer, ResumingClient
from ..support.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


def app_with_streams(ended: list) -> App:
    app = App()
    app.get("/_ws", define_websocket_handler(message=lambda peer, message: peer.send(message.text())))

    @app.get("/events")
    def events(request):
        stream = create_event_stream(request, keep_alive=None)
        stream.on_closed(lambda: ended.append(time.monotonic()))
        return stream

    return app


def ready_status(server) -> int:
    return requests.get(server.url + "/health/ready", timeout=5).status_code


def close_times(clients: list, started: float) -> list[float]:
    """Read every client's close frame at once (a thread each): when each arrived, after ``started``."""
    times: list = [None] * len(clients)

    def read(index: int) -> None:
        code, _ = recv_close(clients[index])
        times[index] = (time.monotonic() - started, code)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    return times


def assert_spread(times: list[float], start: float, period: float, bins: int = 8) -> None:
    """``times`` cover most of [start, start + period], and no bin holds a crowd."""
    assert min(times) >= start - 0.05, f"a close came before the drain's delay was over: {min(times):.3f}"
    assert max(times) - min(times) >= 0.6 * period, f"closes within {max(times) - min(times):.2f} s only"
    counts = collections.Counter(min(bins - 1, int((t - start) / period * bins)) for t in times)
    assert max(counts.values()) <= 3 * len(times) / bins, f"bunched: {sorted(counts.items())}"


def test_readiness_fails_first_then_newcomers_get_503_then_peers_get_1012_spread(start_server):
    ended: list = []
    server = start_server(app_with_streams(ended), health_path="/health", drain_delay=0.6, drain_period=1.5)
    clients = [connect(server) for _ in range(24)]
    assert ready_status(server) == 200
    started = time.monotonic()
    drainer = threading.Thread(target=server.drain)  # from another thread: waits for the end
    drainer.start()
    assert wait_until(lambda: ready_status(server) == 503, timeout=0.5)
    ready = requests.get(server.url + "/health/ready", timeout=5).json()
    assert ready == {
        "status": "unavailable",
        "checks": {"listening": True, "not_draining": False, "broker": True, "threads": True},
    }
    # Within the delay: nobody is closed yet, and a newcomer is still served.
    assert time.monotonic() - started < 0.5
    late = connect(server)
    late.send("still served")
    assert late.recv() == "still served"
    clients.append(late)
    times = close_times(clients, started)
    assert {code for _, code in times} == {1012}
    assert_spread([t for t, _ in times], 0.6, 1.5)
    drainer.join(10)
    assert not drainer.is_alive() and server.finished
    assert time.monotonic() - started < 0.6 + 1.5 + 2  # once every peer answered: no need for shutdown_timeout


def test_after_the_delay_upgrades_and_streams_get_503_with_retry_after(start_server):
    ended: list = []
    server = start_server(app_with_streams(ended), drain_delay=0.2, drain_period=3)
    holder = connect(server)  # keeps the drain going
    server.call_in_hub(server.drain)
    time.sleep(0.4)
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(server)
    assert refused.value.status_code == 503
    assert refused.value.resp_headers["retry-after"] == "5"
    response = requests.get(server.url + "/events", timeout=5)
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert server.stats()["refused"] == {503: 2}
    holder.close()


def test_an_event_stream_gets_a_retry_hint_and_ends(start_server):
    ended: list = []
    server = start_server(app_with_streams(ended), drain_period=0.5)
    response = requests.get(server.url + "/events", stream=True, timeout=5)
    lines = response.iter_lines()
    server.call_in_hub(server.drain)
    rest = list(lines)
    assert rest[0].startswith(b"retry: ") and 1000 <= int(rest[0][7:]) <= 3000
    assert rest[1:] == [b""]
    assert wait_until(lambda: ended)
    assert wait_until(lambda: server.finished)


def test_the_process_ends_at_the_period_when_a_peer_never_answers(start_server):
    from ..support import RawClient

    server = start_server(app_with_streams([]), drain_period=0.3, shutdown_timeout=0.5, close_timeout=30)
    with RawClient(server) as silent:
        started = time.monotonic()
        server.drain()
        elapsed = time.monotonic() - started
        frames = silent.read_all_frames()
    assert frames[0][0] == 0x8 and frames[0][1][:2] == (1012).to_bytes(2, "big")
    assert 0.3 <= elapsed < 3  # the period and the shutdown timeout, not the 30 s close_timeout


def test_drain_refuses_bad_durations_and_a_second_drain_is_a_no_op(start_server):
    server = start_server(app_with_streams([]), drain_period=0.2)
    with pytest.raises(ConfigurationError, match="period"):
        server.drain(period=-1)
    with pytest.raises(ConfigurationError, match="delay"):
        server.drain(delay=float("nan"))
    server.drain()
    server.drain()  # already over: nothing happens
    assert server.finished


def test_the_health_path_must_be_absolute(start_server):
    with pytest.raises(ConfigurationError, match="health_path"):
        start_server(app_with_streams([]), health_path="health")


# -- subprocesses ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_flips_readiness_before_any_close_and_exits_after_the_period(tmp_path):
    with SyncwsRunner(ROOT) as run:
        process = run(
            "tests.apps.channels_app:app", "--port", "0", "--health-path", "/health",
            "--drain-delay", "1", "--drain-period", "1",
        )  # fmt: skip
        url = process.wait_for_url()
        ws_url = url.replace("http", "ws") + "/_syncws"
        peers = [websocket.create_connection(ws_url, timeout=5, subprotocols=["syncws.v1"]) for _ in range(5)]
        assert requests.get(url + "/health/live", timeout=5).json() == {"status": "ok", "checks": {"serving": True}}
        assert requests.get(url + "/health/ready", timeout=5).status_code == 200
        started = time.monotonic()
        process.proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: requests.get(url + "/health/ready", timeout=5).status_code == 503, timeout=0.8)
        for peer in peers:  # nothing yet, no close: the balancer is given drain_delay to notice
            peer.settimeout(0.1)
            with pytest.raises(websocket.WebSocketTimeoutException):
                peer.recv()
            peer.settimeout(5)
        assert time.monotonic() - started < 1
        codes = [recv_close(peer)[0] for peer in peers]
        assert codes == [1012] * 5
        assert time.monotonic() - started >= 1  # not before the delay
        assert process.finish(timeout=10) == 0
        assert time.monotonic() - started < 1 + 1 + 3


DRAIN_DELAY = 0.5
DRAIN_PERIOD = 4.0
CLIENTS = 2000
TOPICS = 20


@pytest.mark.slow
def test_draining_one_of_two_instances_spreads_2000_reconnects_and_loses_nothing(tmp_path):
    """2,000 channels clients on two instances behind a TCP balancer; one is drained while publishes flow."""
    with RedisServer(tmp_path) as redis_server, SyncwsRunner(ROOT) as run:
        ports = [free_port(), free_port()]
        common = [
            "--broker", redis_server.url, "--history-size", "1000", "--health-path", "/health",
            "--drain-delay", str(DRAIN_DELAY), "--drain-period", str(DRAIN_PERIOD),
        ]  # fmt: skip
        env = {"SYNCWS_ADMIN_KEY": "deploy-test"}
        drained, kept = (
            run("tests.apps.channels_app:app", "--port", str(port), "--admin-path", "/admin", *common, *extra, env=env)
            # The drained one logs, as JSON, when its drain closes each connection: the server's own times.
            for port, extra in zip(
                ports, (("--log-format", "json", "--log-level", "debug"), ("--no-access-log",)), strict=True
            )
        )
        for process in (drained, kept):
            process.wait_for_url()
        outcome = asyncio.run(_drain_under_load(drained, ports))
        assert drained.finish(timeout=15) == 0
    moved, sigterm_at, sigterm_clock, balancer_routed, clients = outcome
    # Half the clients were on the drained instance, and every one of them was told 1012, once.
    assert CLIENTS * 0.4 <= len(moved) <= CLIENTS * 0.6, balancer_routed
    assert all([code for _, code in client.closes].count(1012) == 1 for client in moved)
    # The server closed them spread over the period, after the delay: its JSON log lines say when
    # it sent each close (the connections' own last lines say when each client answered).
    entries = [json.loads(line) for line in drained.err.splitlines() if line.startswith("{")]
    closes = sorted(
        _epoch(entry["time"]) - sigterm_at for entry in entries if entry["message"].startswith("syncws: drain: closing")
    )
    assert len(closes) == len(moved)
    ended = [entry for entry in entries if entry.get("kind") == "websocket"]
    assert len(ended) == len(moved) and {entry["code"] for entry in ended} == {1012}
    assert all(entry["path"] == "/_syncws" and entry["duration"] > 1 for entry in ended)
    bins = collections.Counter(min(9, int((t - DRAIN_DELAY) / DRAIN_PERIOD * 10)) for t in closes)
    refused = sum("503" in error for client in clients for error in client.errors)
    print(f"moved {len(moved)}: closed from {closes[0]:.2f} s to {closes[-1]:.2f} s; per tenth {sorted(bins.items())}")
    print(
        f"reconnects refused with 503: {refused}; other connection errors: {sum(map(len, (c.errors for c in clients))) - refused}"
    )
    assert_spread(closes, DRAIN_DELAY, DRAIN_PERIOD, bins=10)
    # No client was told before the delay was over (readiness first), however late its loop read it.
    assert min(client.closes[0][0] - sigterm_clock for client in moved) >= DRAIN_DELAY - 0.05
    # Each moved client resumed on the other instance without a gap, and nobody lost or repeated a message.
    for client in moved:  # the first subscribe had no offset; the second resumed from one
        assert client.resumes[:1] == [False] and client.resumes[-1] is True, (client.resumes, client.errors)
    for client in clients:
        assert client.received == list(range(len(client.received))), f"{client.topic}: gap or repeat"
    published = {client.topic: len(client.received) for client in clients}
    assert len(set(published.values())) == 1, "some clients missed the end"


async def _drain_under_load(drained, ports) -> tuple:
    balancer = await Balancer([("127.0.0.1", port) for port in ports], "/health/ready").start()
    url = f"ws://127.0.0.1:{balancer.port}/_syncws"
    clients = [ResumingClient(url, f"load-{i % TOPICS}") for i in range(CLIENTS)]
    stop = asyncio.Event()  # the publisher's; the clients run until cancelled at the end
    done = asyncio.Event()
    tasks = []
    for index, client in enumerate(clients):
        tasks.append(asyncio.create_task(client.run(done)))
        if index % 100 == 99:
            await asyncio.sleep(0.05)  # connect in waves, as a real population does
    await asyncio.wait_for(asyncio.gather(*(client.subscribed.wait() for client in clients)), 60)
    routed_before = dict(balancer.routed)
    publisher = asyncio.create_task(_publish(ports[1], stop))
    await asyncio.sleep(1.0)
    sigterm_at, sigterm_clock = time.time(), time.monotonic()
    drained.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(DRAIN_DELAY + DRAIN_PERIOD + 2)
    stop.set()
    count = await publisher
    # Everything published has arrived (a resumed client may still be replaying, or backing off).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(
        len(client.received) < count or (client.closes and not client.resumes[1:]) for client in clients
    ):
        await asyncio.sleep(0.1)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await balancer.stop()
    moved = [client for client in clients if client.closes and client.closes[0][1] == 1012]
    return moved, sigterm_at, sigterm_clock, routed_before, clients


def _epoch(stamp: str) -> float:
    """A JSON log line's ``time`` (UTC, ISO 8601 with milliseconds) as seconds since the epoch."""
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC).timestamp()


async def _publish(port: int, stop: asyncio.Event) -> int:
    """Publish n = 0, 1, 2... to every topic, a batch every 0.5 s, through the kept instance's admin API."""
    loop = asyncio.get_running_loop()
    session = requests.Session()
    session.headers["Authorization"] = "Bearer deploy-test"
    url = f"http://127.0.0.1:{port}/admin/batch"
    n = 0
    while not stop.is_set():
        batch: dict[str, Any] = {"publications": [{"topic": f"load-{t}", "data": {"n": n}} for t in range(TOPICS)]}
        response = await loop.run_in_executor(None, functools.partial(session.post, url, json=batch, timeout=10))
        assert response.json() == {"published": TOPICS}
        n += 1
        await asyncio.sleep(0.5)
    return n


@pytest.mark.slow
def test_the_python_client_obeys_the_drain_and_resumes_on_the_other_instance(tmp_path):
    from syncws import Publisher
    from syncws.client import Client

    with RedisServer(tmp_path) as redis_server, SyncwsRunner(ROOT) as run:
        ports = [free_port(), free_port()]
        args = ("--broker", redis_server.url, "--history-size", "100", "--health-path", "/health")
        processes = [
            run("tests.apps.channels_app:app", "--port", str(port), "--drain-period", "0.5", *args) for port in ports
        ]
        for process in processes:
            process.wait_for_url()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        balancer = asyncio.run_coroutine_threadsafe(
            Balancer([("127.0.0.1", port) for port in ports], "/health/ready").start(), loop
        ).result(5)
        got: list = []
        client = Client(f"ws://127.0.0.1:{balancer.port}/_syncws", token="dee", backoff_base=0.2)
        try:
            subscription = client.subscribe("orders", on_publication=lambda publication: got.append(publication.data))
            first = next(backend for backend, count in balancer.routed.items() if count)[1]
            drained = processes[ports.index(first)]
            with Publisher(redis_server.url) as publisher:
                for n in range(50):
                    publisher.publish("orders", n)
                assert wait_until(lambda: len(got) == 50)
                drained.proc.send_signal(signal.SIGTERM)
                for n in range(50, 100):
                    publisher.publish("orders", n)
                    time.sleep(0.01)
                assert drained.finish(timeout=10) == 0
            assert wait_until(lambda: len(got) == 100, timeout=10)
            assert got == list(range(100))
            assert client.reconnects == 1 and subscription.recovered
            assert balancer.routed[("127.0.0.1", ports[1 - ports.index(first)])] >= 1
        finally:
            client.close()
            asyncio.run_coroutine_threadsafe(balancer.stop(), loop).result(5)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()


def test_finish_during_a_drain_ends_it_at_once(start_server):
    server = start_server(app_with_streams([]), drain_period=30)
    clients = [connect(server) for _ in range(3)]
    server.call_in_hub(server.drain)
    assert wait_until(lambda: server.draining)
    started = time.monotonic()
    server.call_in_hub(gevent.spawn, server.finish)  # what a second SIGTERM does, in a greenlet as its handler
    assert wait_until(lambda: server.finished)
    assert time.monotonic() - started < 2  # not the 30 s period
    for client in clients:
        client.close()
