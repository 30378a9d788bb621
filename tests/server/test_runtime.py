"""Embedding in a plain, un-patched program: views and hooks in a thread pool.

This test process is not monkey-patched (see conftest.py): ``time.sleep`` in
a view or a hook really blocks the OS thread it runs in.  With the ``threads``
option (``auto``, the default, is on in an un-patched process) views and
hooks run in the server's thread pool, so blocking code holds up only its own
request or peer; with ``threads="off"`` it freezes the server's hub and every
connection with it.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

from syncws import App, create_event_stream, define_websocket_handler
from syncws.base.options import ServerOptions

from ..conftest import connect, wait_until
from ..support import HoldingApp, recv_close


def sleeper_app(started: threading.Event, **handler_options) -> App:
    """``sleep`` makes the hook block for a second (un-patched ``time.sleep``); anything else echoes."""

    def message(peer, msg):
        if msg.text() == "sleep":
            started.set()
            time.sleep(1.0)
            peer.send("woke")
        else:
            peer.send(msg.text())

    app = App()
    app.get("/_ws", define_websocket_handler(message=message, **handler_options))
    return app


def echo_time_while_another_sleeps(server, started: threading.Event) -> float:
    sleeper = connect(server)
    other = connect(server)
    other.send("warm-up")
    assert other.recv() == "warm-up"
    sleeper.send("sleep")
    assert started.wait(5)
    t0 = time.monotonic()
    other.send("ping")
    assert other.recv() == "ping"
    elapsed = time.monotonic() - t0
    assert sleeper.recv() == "woke"
    sleeper.close()
    other.close()
    return elapsed


def test_by_default_a_blocking_hook_does_not_delay_other_peers(start_server):
    started = threading.Event()
    server = start_server(sleeper_app(started))  # threads="auto": on, this process is not patched
    assert echo_time_while_another_sleeps(server, started) < 0.5


def test_the_per_handler_option_does_the_same(start_server):
    started = threading.Event()
    server = start_server(sleeper_app(started, threads=True), threads="off")
    assert echo_time_while_another_sleeps(server, started) < 0.5


def test_without_threads_a_blocking_hook_blocks_every_peer(start_server):
    # Documents why the option exists: an un-patched sleep stops the server's hub.
    started = threading.Event()
    server = start_server(sleeper_app(started), threads="off")
    assert echo_time_while_another_sleeps(server, started) > 0.8


def test_a_handler_can_keep_its_hooks_in_the_hub(start_server):
    started = threading.Event()
    server = start_server(sleeper_app(started, threads="off"))
    assert echo_time_while_another_sleeps(server, started) > 0.8


def blocking_view_app(started: threading.Event) -> App:
    app = App()

    @app.get("/slow")
    def slow(request):
        started.set()
        time.sleep(2.0)  # an un-patched blocking call: a C driver, requests, an old library
        return "done"

    app.get("/_ws", define_websocket_handler(message=lambda peer, msg: peer.send(msg.text())))
    return app


def echo_time_while_a_view_sleeps(server, started: threading.Event) -> tuple[float, str]:
    client = connect(server)
    client.send("warm-up")
    assert client.recv() == "warm-up"
    answers: list = []
    view = threading.Thread(target=lambda: answers.append(requests.get(server.url + "/slow", timeout=10).text))
    view.start()
    assert started.wait(5)
    t0 = time.monotonic()
    client.send("ping")
    assert client.recv() == "ping"
    elapsed = time.monotonic() - t0
    view.join(10)
    client.close()
    return elapsed, answers[0]


@pytest.mark.parametrize("threads", ["auto", "on"])
def test_a_view_that_blocks_does_not_stall_a_websocket(start_server, threads):
    """Issue 21: a WSGI view sleeping 2 s, a WebSocket echo on another connection meanwhile."""
    started = threading.Event()
    server = start_server(blocking_view_app(started), threads=threads)
    elapsed, answer = echo_time_while_a_view_sleeps(server, started)
    assert answer == "done"
    assert elapsed < 0.2


def test_with_threads_off_a_view_that_blocks_stalls_every_connection(start_server):
    started = threading.Event()
    server = start_server(blocking_view_app(started), threads="off")
    elapsed, answer = echo_time_while_a_view_sleeps(server, started)
    assert answer == "done"
    assert elapsed > 1.0


def test_a_full_pool_shows_in_the_stats_and_requests_wait_for_a_thread(start_server):
    holding = HoldingApp()
    server = start_server(holding.app, thread_pool_size=2)
    holding.request(server, 3)
    assert wait_until(lambda: server.stats()["threads"]["queued"] == 1)
    stats = server.stats()["threads"]
    # Busy counts a call once a worker has it; the view starts a moment later.
    assert wait_until(lambda: len(holding.running) == 2)  # the third waits for a thread
    assert (stats["enabled"], stats["size"], stats["busy"], stats["waited"]) == (True, 2, 2, 1)
    holding.release()
    assert holding.answers == ["held"] * 3
    assert wait_until(lambda: server.stats()["threads"]["busy"] == 0)
    assert server.stats()["threads"]["tasks"] >= 3


def test_views_in_threads_read_bodies_stream_and_write(start_server):
    """What a view touches of its connection goes through the hub: bodies, generators, write()."""
    app = App()

    @app.post("/echo")
    def echo(request):
        return request.get_data()

    def streaming(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body():
            for n in range(3):
                time.sleep(0.05)  # a generator that blocks between chunks
                yield f"chunk {n}\n".encode()

        return body()

    def legacy_write(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written, ")
        return [b"returned"]

    routes = {"/stream": streaming, "/write": legacy_write}

    def wsgi(environ, start_response):
        return routes.get(environ["PATH_INFO"], app)(environ, start_response)

    server = start_server(wsgi)
    body = b"x" * 300_000
    assert requests.post(server.url + "/echo", data=body, timeout=10).content == body
    assert requests.get(server.url + "/stream", timeout=10).text == "chunk 0\nchunk 1\nchunk 2\n"
    assert requests.get(server.url + "/write", timeout=10).text == "written, returned"
    assert server.stats()["threads"]["enabled"] is True


def test_each_peers_hooks_keep_their_order_in_threads(start_server):
    events: list = []

    def message(peer, msg):
        n = int(msg.text())
        if n % 7 == 0:
            time.sleep(0.005)  # uneven work must not reorder anything
        events.append((peer.context["name"], n))
        peer.send(msg.text())

    def upgrade(request):
        return {"context": {"name": request.args["name"]}}

    app = App()
    app.get(
        "/_ws",
        define_websocket_handler(
            upgrade=upgrade, message=message, close=lambda p, d: events.append((p.context["name"], "closed"))
        ),
    )
    server = start_server(app, thread_pool_size=4)
    clients = {name: connect(server, f"/_ws?name={name}") for name in ("a", "b")}
    for n in range(100):
        for client in clients.values():
            client.send(str(n))
    for client in clients.values():
        assert [client.recv() for _ in range(100)] == [str(n) for n in range(100)]
        client.close()
    assert wait_until(lambda: len(events) == 202)
    for name in clients:
        assert [n for who, n in events if who == name] == [*range(100), "closed"]


def test_hooks_run_in_pool_threads_and_errors_still_close_with_1011(start_server):
    def open_(peer):
        peer.send(str(threading.get_ident()))

    def message(peer, msg):
        raise RuntimeError("boom")

    errors: list = []
    app = App()
    app.get(
        "/threads",
        define_websocket_handler(open=open_, message=message, error=lambda p, e: errors.append(e), threads=True),
    )
    app.get("/hub", define_websocket_handler(open=open_, threads=False))
    server = start_server(app)
    in_pool = connect(server, "/threads")
    in_hub = connect(server, "/hub")
    assert in_pool.recv() != in_hub.recv()
    in_pool.send("x")
    assert recv_close(in_pool)[0] == 1011
    assert wait_until(lambda: len(errors) == 1) and isinstance(errors[0], RuntimeError)


def test_bad_pool_sizes_are_refused():
    for bad in (0, -1, 1.5, "4"):
        with pytest.raises(ValueError):
            ServerOptions(thread_pool_size=bad)
    assert ServerOptions(thread_pool_size=8).thread_pool_size == 8


def test_a_host_program_publishes_from_its_main_thread_then_stops(start_server):
    """The legacy-program shape: serve(background=True), then ordinary blocking code."""
    app = App()
    app.get("/_ws", define_websocket_handler(open=lambda peer: peer.subscribe("ticks")))

    @app.get("/events")
    def events(request):
        stream = create_event_stream(request, keep_alive=None)
        stream.subscribe("ticks")
        return stream

    server = start_server(app)
    ws_seen: list = []
    sse_seen: list = []
    client = connect(server)
    response = requests.get(server.url + "/events", stream=True, timeout=5)

    def read_ws():
        while True:
            message = client.recv()
            if not message:
                return
            ws_seen.append(message)

    def read_sse():
        for line in response.iter_lines():
            if line.startswith(b"data: "):
                sse_seen.append(line[6:].decode())

    readers = [threading.Thread(target=read_ws, daemon=True), threading.Thread(target=read_sse, daemon=True)]
    for reader in readers:
        reader.start()

    # The host's own loop: plain time.sleep, publish from the main thread.
    n = 0
    deadline = time.monotonic() + 5
    while (len(ws_seen) < 3 or len(sse_seen) < 3) and time.monotonic() < deadline:
        server.publish("ticks", {"n": n})
        n += 1
        time.sleep(0.05)
    assert len(ws_seen) >= 3 and len(sse_seen) >= 3
    # Ordered, no gaps after the first received.
    first = int(ws_seen[0][5:-1])
    assert ws_seen[:3] == [f'{{"n":{first + i}}}' for i in range(3)]

    t0 = time.monotonic()
    server.stop(timeout=2)
    assert time.monotonic() - t0 < 4
    for reader in readers:
        reader.join(5)
        assert not reader.is_alive()
    response.close()
    # The server's OS thread has finished, and the server refuses further use.
    assert server._thread_done.acquire(timeout=1)
    server._thread_done.release()
    with pytest.raises(RuntimeError):
        server.publish("ticks", "late")
