"""Graceful shutdown: SIGINT and stop(timeout), and SIGTERM's drain with a period of 0.

stop(): stop accepting, answer new upgrades on still-open keep-alive
connections with 503, close every peer with 1001 (close hooks run), end every
event stream, exit; a second signal exits at once.  SIGTERM drains instead
(1012, a retry: hint for streams); its spread is tested in test_drain.py.
"""

from __future__ import annotations

import signal
import socket
import struct
import threading
import time

import pytest
import requests
import websocket

from syncws import App, create_event_stream, define_websocket_handler
from syncws.protocol import OP_CLOSE, OP_TEXT

from ..conftest import connect, wait_until
from ..support import RawClient, SyncwsRunner, parse_response, read_head, recv_close, upgrade_request

pytestmark = pytest.mark.slow  # subprocesses, browsers, Redis or load: not in the fast loop

APP = """
    import sys
    from syncws import App, create_event_stream, define_websocket_handler

    app = App()

    def on_open(peer):
        peer.send("hi")

    def on_message(peer, message):
        peer.send(message.text())

    def on_close(peer, details):
        print(f"closed {details.code} {details.reason}", flush=True)

    app.get("/_ws", define_websocket_handler(open=on_open, message=on_message, close=on_close))

    @app.get("/events")
    def events(request):
        stream = create_event_stream(request)
        stream.on_closed(lambda: print("stream ended", flush=True))
        stream.push("first")
        return stream

    app.get("/", lambda request: "home")
"""


@pytest.fixture
def run(tmp_path):
    with SyncwsRunner(tmp_path) as start:
        yield start


def start_app(run, *args: str):
    process = run("shutapp:app", "--port", "0", *args, files={"shutapp.py": APP})
    url = process.wait_for_url()
    return process, url


def open_stream(url: str) -> tuple[requests.Response, object]:
    response = requests.get(url + "/events", stream=True, timeout=5)
    assert response.status_code == 200
    lines = response.iter_lines()
    assert next(lines) == b"data: first"
    assert next(lines) == b""  # the blank line that ends the event
    return response, lines


def count(process, text: str) -> int:
    return sum(1 for line in process.stdout if line.strip() == text)


def test_sigterm_drains_50_peers_with_1012_ends_streams_and_exits_0(run):
    process, url = start_app(run, "--shutdown-timeout", "5", "--drain-period", "0")
    ws = url.replace("http://", "ws://") + "/_ws"
    clients = [websocket.create_connection(ws, timeout=5) for _ in range(50)]
    for client in clients:
        assert client.recv() == "hi"
    streams = [open_stream(url) for _ in range(3)]

    started = time.monotonic()
    process.proc.send_signal(signal.SIGTERM)
    codes = [recv_close(client) for client in clients]  # websocket-client answers the close
    assert codes == [(1012, "service restart")] * 50  # reconnect, to another instance
    for response, lines in streams:
        rest = list(lines)  # a reconnect delay for EventSource, then the end (EOF)
        assert len(rest) == 2 and rest[0].startswith(b"retry: ") and rest[1] == b""
        assert 1000 <= int(rest[0][7:]) <= 3000
        response.close()
    assert process.finish(timeout=5) == 0
    assert time.monotonic() - started < 5  # every peer answered: no need to wait for the timeout
    assert count(process, "closed 1012 service restart") == 50  # every close hook ran
    assert count(process, "stream ended") == 3
    for client in clients:
        client.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=1).close()


def test_sigterm_waits_at_most_the_shutdown_timeout_for_silent_peers(run):
    process, url = start_app(run, "--shutdown-timeout", "1", "--close-timeout", "30", "--drain-period", "0")
    with RawClient(_Server(url)) as silent:
        assert silent.read_frame() == (OP_TEXT, b"hi")
        started = time.monotonic()
        process.proc.send_signal(signal.SIGTERM)
        frames = silent.read_all_frames()  # never answers the close; returns when dropped
    assert frames[0][0] == OP_CLOSE and struct.unpack("!H", frames[0][1][:2])[0] == 1012
    assert process.finish(timeout=5) == 0
    assert time.monotonic() - started < 4  # 1 s of drain, not the 30 s close_timeout
    assert count(process, "closed 1012 service restart") == 1


def test_a_second_sigterm_exits_at_once(run):
    process, url = start_app(run, "--shutdown-timeout", "30", "--close-timeout", "30", "--drain-period", "0")
    with RawClient(_Server(url)) as silent:
        assert silent.read_frame() == (OP_TEXT, b"hi")
        process.proc.send_signal(signal.SIGTERM)
        opcode, payload = silent.read_frame()
        assert opcode == OP_CLOSE and struct.unpack("!H", payload[:2])[0] == 1012
        time.sleep(0.3)
        assert process.proc.poll() is None  # draining: waiting for our close frame (up to 30 s)
        started = time.monotonic()
        process.proc.send_signal(signal.SIGTERM)
        assert process.finish(timeout=5) == 0
        assert time.monotonic() - started < 3
    assert "second signal" in process.err
    assert count(process, "closed 1012 service restart") == 1  # the hook still ran


def test_sigint_is_a_quick_graceful_stop_with_1001(run):
    # Ctrl-C in development: no drain period, every peer at once.
    process, url = start_app(run)
    client = websocket.create_connection(url.replace("http://", "ws://") + "/_ws", timeout=5)
    assert client.recv() == "hi"
    process.proc.send_signal(signal.SIGINT)
    assert recv_close(client) == (1001, "going away")
    assert process.finish(timeout=5) == 0
    client.close()


class _Server:
    """What RawClient needs from a server: its port."""

    def __init__(self, url: str) -> None:
        self.port = int(url.rsplit(":", 1)[1])


# -- in-process: the drain ----------------------------------------------------------


def drain_app(closed: list, stream_ended: threading.Event) -> App:
    app = App()
    app.get("/", lambda request: "home")
    app.get(
        "/_ws",
        define_websocket_handler(
            message=lambda peer, message: peer.send(message.text()),
            close=lambda peer, details: closed.append((details.code, details.reason)),
        ),
    )

    @app.get("/events")
    def events(request):
        stream = create_event_stream(request)
        stream.on_closed(stream_ended.set)
        return stream

    return app


def keep_alive_connection(server) -> socket.socket:
    """A connection that has served one request and stays open for the next."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = read_head(sock)
    while len(body) < 4:
        body += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200 ") and body == b"home"
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return parse_response(data)


def test_during_the_drain_new_upgrades_get_503_and_peers_1001(start_server):
    closed: list = []
    stream_ended = threading.Event()
    server = start_server(drain_app(closed, stream_ended), close_timeout=1.5)
    waiting_upgrade = keep_alive_connection(server)
    waiting_http = keep_alive_connection(server)
    polite = connect(server)
    stream = requests.get(server.url + "/events", stream=True, timeout=5)
    with RawClient(server) as slow:  # never answers the close: keeps the drain going
        stopper = threading.Thread(target=server.stop, args=(5,), daemon=True)
        started = time.monotonic()
        stopper.start()
        opcode, payload = slow.read_frame()
        assert opcode == OP_CLOSE and struct.unpack("!H", payload[:2])[0] == 1001
        assert payload[2:] == b"going away"
        assert recv_close(polite) == (1001, "going away")

        # Still draining: an upgrade on an already-open connection gets 503.
        waiting_upgrade.sendall(upgrade_request())
        status, headers, body = read_response(waiting_upgrade)  # and the connection is closed
        assert status == 503
        assert headers.get("retry-after", "").isdigit()
        assert headers.get("connection", "").lower() == "close"
        assert "sec-websocket-accept" not in headers
        assert 0 < len(body) < 200
        # A plain request is still answered, but the connection is not kept.
        waiting_http.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(waiting_http)
        assert (status, body) == (200, b"home")
        assert headers.get("connection", "").lower() == "close"
        # New connections are refused: the server stopped accepting.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()

        assert stream_ended.wait(5)  # the event stream was ended
        assert list(stream.iter_lines()) == []
        # The silent peer is dropped after close_timeout, then the stop completes.
        assert slow.read_all_frames() == []
    stopper.join(timeout=5)
    assert not stopper.is_alive()
    assert time.monotonic() - started < 4
    assert sorted(closed) == [(1001, "going away"), (1001, "going away")]
    for sock in (waiting_upgrade, waiting_http):
        sock.close()
    polite.close()
    stream.close()


def test_stop_timeout_bounds_the_drain(start_server):
    closed: list = []
    server = start_server(drain_app(closed, threading.Event()), close_timeout=30)
    with RawClient(server) as slow:
        started = time.monotonic()
        server.stop(timeout=0.5)  # blocks until the server has finished
        elapsed = time.monotonic() - started
        assert elapsed < 3
        frames = slow.read_all_frames()
    assert frames and frames[0][0] == OP_CLOSE
    assert wait_until(lambda: closed)
    assert closed == [(1001, "going away")]


def test_an_upgrade_hook_still_running_when_the_stop_begins_gets_503(start_server):
    entered = threading.Event()
    release = threading.Event()
    opened: list = []

    def slow_upgrade(request):
        entered.set()
        # Blocks this connection's greenlet only (the server thread keeps running).
        import gevent

        while not release.is_set():
            gevent.sleep(0.01)

    app = App()
    app.get("/_ws", define_websocket_handler(upgrade=slow_upgrade, open=opened.append))
    server = start_server(app)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(upgrade_request())
        assert entered.wait(5)
        stopper = threading.Thread(target=server.stop, args=(2,), daemon=True)
        stopper.start()
        assert wait_until(lambda: server.stopping)
        release.set()
        status, headers, body = read_response(sock)
    assert status == 503 and "retry-after" in headers, body
    assert opened == []
    stopper.join(timeout=5)
