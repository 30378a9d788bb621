"""Closing in both directions, dropped connections, and hooks that raise."""

from __future__ import annotations

import queue
import struct
import time

import pytest
import requests
from websocket import ABNF
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.sync.client import connect as ws_connect

from syncws import App, define_websocket_handler

from ..conftest import connect, wait_until, ws_url
from ..support import RawClient, recv_close


class Recorder:
    """Collects what the hooks saw; hooks run in the server thread."""

    def __init__(self) -> None:
        self.peers: queue.Queue = queue.Queue()
        self.closes: queue.Queue = queue.Queue()
        self.errors: queue.Queue = queue.Queue()
        self.close_states: list = []

    def hooks(self, **extra):
        def open_(peer):
            self.peers.put(peer)

        def message(peer, msg):
            text = msg.text() if not msg.is_binary else ""
            if text.startswith("close:"):
                _, code, reason = text.split(":", 2)
                peer.close(int(code), reason)
            elif text == "close-default":
                peer.close()
            elif text == "terminate":
                peer.terminate()
            else:
                peer.send(msg)

        def close(peer, details):
            self.close_states.append((peer in peer.server.peers, peer in peer.peers, peer.topics))
            self.closes.put((details.code, details.reason))

        def error(peer, exc):
            self.errors.put(exc)

        hooks = {"open": open_, "message": message, "close": close, "error": error}
        hooks.update(extra)
        return hooks


def make_server(start_server, recorder: Recorder, **options):
    extra = options.pop("hooks", {})
    app = App()
    app.get("/_ws", define_websocket_handler(**recorder.hooks(**extra)))

    @app.get("/health")
    def health(request):
        return "ok"

    return start_server(app, **options)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def server(start_server, rec):
    """A server with the recorder's hooks and defaults."""
    return make_server(start_server, rec)


def new_ws_client(server, path="/_ws"):
    return ws_connect(ws_url(server, path), proxy=None, compression=None, open_timeout=5, close_timeout=5, legacy=True)


def closed_by_server(client, error: type[ConnectionClosed] = ConnectionClosed):
    """websockets: the close frame the server sent, from the ``error`` the next ``recv`` raises."""
    with pytest.raises(error) as info:
        client.recv(timeout=5)
    return info.value.rcvd


# -- client-initiated close --------------------------------------------------


def test_client_close_with_code_and_reason(rec, server):
    client = connect(server)
    rec.peers.get(timeout=5)
    client.close(4001, "bye")
    assert rec.closes.get(timeout=5) == (4001, "bye")
    # The server echoed the code in its close frame.
    assert client.close_frame is not None
    assert struct.unpack("!H", client.close_frame.data[:2])[0] == 4001
    assert rec.close_states == [(False, False, frozenset())]
    assert rec.errors.empty()


def test_client_close_with_non_ascii_reason(rec, server):
    client = new_ws_client(server)
    rec.peers.get(timeout=5)
    client.close(4003, "au revoir ✓")
    assert rec.closes.get(timeout=5) == (4003, "au revoir ✓")


def test_client_close_without_payload_gives_none_none(rec, server):
    client = connect(server)
    rec.peers.get(timeout=5)
    client.send(b"", opcode=ABNF.OPCODE_CLOSE)
    opcode, frame = client.recv_data_frame(True)
    assert opcode == ABNF.OPCODE_CLOSE
    assert frame.data == b""  # "no status" is answered with an empty close frame
    assert rec.closes.get(timeout=5) == (None, None)
    client.shutdown()


def test_client_close_via_websockets_library(rec, server):
    with new_ws_client(server) as client:
        client.send("hi")
        assert client.recv(timeout=5) == "hi"
        client.close(1000, "normal")
        assert client.close_code == 1000
    assert rec.closes.get(timeout=5) == (1000, "normal")


def test_client_drops_tcp_without_close(rec, server):
    client = connect(server)
    client.send("hi")
    assert client.recv() == "hi"
    client.shutdown()  # closes the socket, no close frame
    assert rec.closes.get(timeout=5) == (1006, "")
    assert wait_until(lambda: not server.peers)
    assert rec.close_states == [(False, False, frozenset())]


def test_client_drops_tcp_in_the_middle_of_a_frame(rec, server):
    raw = RawClient(server)
    raw.sock.sendall(b"\x81\x85\x00\x00\x00\x00he")  # 5-byte text frame, only 2 bytes sent
    raw.close()
    assert rec.closes.get(timeout=5) == (1006, "")


# -- server-initiated close --------------------------------------------------


def test_server_close_with_code_and_reason(rec, server):
    client = new_ws_client(server)
    client.send("close:4002:server bye")
    rcvd = closed_by_server(client)
    assert rcvd is not None
    assert (rcvd.code, rcvd.reason) == (4002, "server bye")
    assert (client.close_code, client.close_reason) == (4002, "server bye")
    assert rec.closes.get(timeout=5) == (4002, "server bye")
    assert rec.errors.empty()


def test_server_close_seen_by_websocket_client(rec, server):
    client = connect(server)
    client.send("close:4002:server bye")
    assert recv_close(client) == (4002, "server bye")
    assert rec.closes.get(timeout=5) == (4002, "server bye")


def test_server_close_default_is_1000(rec, server):
    client = new_ws_client(server)
    client.send("close-default")
    rcvd = closed_by_server(client)
    assert rcvd.code == 1000
    assert rcvd.reason == ""
    assert rec.closes.get(timeout=5) == (1000, "")


def test_server_close_from_outside_a_hook(rec, server):
    client = connect(server)
    peer = rec.peers.get(timeout=5)
    peer.close(4005, "from test thread")
    assert recv_close(client) == (4005, "from test thread")
    assert rec.closes.get(timeout=5) == (4005, "from test thread")


def test_server_close_when_client_never_answers(start_server, rec):
    """The server hangs up after close_timeout; the details are what it sent."""
    server = make_server(start_server, rec, close_timeout=0.5)
    raw = RawClient(server)
    peer = rec.peers.get(timeout=5)
    started = time.monotonic()
    peer.close(4002, "server bye")
    frames = raw.read_all_frames()  # until the server drops the TCP connection
    elapsed = time.monotonic() - started
    assert frames == [(0x8, struct.pack("!H", 4002) + b"server bye")]
    assert elapsed < 4
    assert rec.closes.get(timeout=5) == (4002, "server bye")
    raw.close()


def test_data_after_server_close_is_not_delivered_to_hooks(start_server, rec):
    seen: list = []
    hooks = rec.hooks()
    inner = hooks["message"]

    def message(peer, msg):
        seen.append(msg.text())
        inner(peer, msg)

    server = make_server(start_server, rec, hooks={"message": message})
    raw = RawClient(server)
    raw.send_frame(0x1, b"close:4002:x")
    assert raw.read_frame() == (0x8, struct.pack("!H", 4002) + b"x")
    raw.send_frame(0x1, b"late message")
    raw.send_frame(0x8, struct.pack("!H", 4002))
    assert raw.read_frame() is None  # server closes the TCP connection
    assert rec.closes.get(timeout=5) == (4002, "x")
    assert seen == ["close:4002:x"]


def test_close_all(rec, server):
    clients = [new_ws_client(server) for _ in range(3)]
    for _ in clients:
        rec.peers.get(timeout=5)
    server.close_all(4010, "maintenance")
    for client in clients:
        rcvd = closed_by_server(client)
        assert (rcvd.code, rcvd.reason) == (4010, "maintenance")
    assert sorted(rec.closes.get(timeout=5) for _ in clients) == [(4010, "maintenance")] * 3
    assert wait_until(lambda: not server.peers)


def test_server_stop_closes_peers_with_1001(rec, server):
    client = new_ws_client(server)
    rec.peers.get(timeout=5)
    server.stop(timeout=2)
    rcvd = closed_by_server(client)
    assert rcvd is not None and rcvd.code == 1001
    assert rec.closes.get(timeout=5)[0] == 1001


def test_send_after_close_is_harmless(start_server, rec):
    def close(peer, details):
        peer.send("too late")  # the peer is gone: dropped, no exception
        peer.publish("t", "too late")
        rec.closes.put((details.code, details.reason))

    server = make_server(start_server, rec, hooks={"close": close})
    client = connect(server)
    rec.peers.get(timeout=5)
    client.close(4001, "bye")
    assert rec.closes.get(timeout=5) == (4001, "bye")
    assert rec.errors.empty()


# -- terminate ---------------------------------------------------------------


def test_terminate_drops_without_close_frame_websockets(rec, server):
    client = new_ws_client(server)
    client.send("hi")
    assert client.recv(timeout=5) == "hi"
    client.send("terminate")
    assert closed_by_server(client, ConnectionClosedError) is None  # no close frame was received
    assert client.close_code == 1006
    assert rec.closes.get(timeout=5) == (1006, "")
    assert wait_until(lambda: not server.peers)


def test_terminate_drops_without_close_frame_raw(rec, server):
    raw = RawClient(server)
    raw.send_frame(0x1, b"hello")
    assert raw.read_frame() == (0x1, b"hello")
    raw.send_frame(0x1, b"terminate")
    frames = raw.read_all_frames()
    assert frames == []  # EOF, and no close frame before it
    assert rec.closes.get(timeout=5) == (1006, "")
    raw.close()


def test_terminate_from_another_thread(rec, server):
    raw = RawClient(server)
    peer = rec.peers.get(timeout=5)
    peer.terminate()
    assert raw.read_all_frames() == []
    assert rec.closes.get(timeout=5) == (1006, "")
    raw.close()


# -- hooks that raise --------------------------------------------------------


class Boom(Exception):
    pass


def _assert_server_still_serves(server, other):
    other.send("still there?")
    assert other.recv() == "still there?"
    fresh = connect(server)
    fresh.send("new")
    assert fresh.recv() == "new"
    fresh.close()
    reply = requests.get(server.url + "/health", timeout=5)
    assert reply.status_code == 200 and reply.text == "ok"


def test_open_hook_exception(start_server, rec):
    boom = Boom("open failed")
    normal_open = rec.hooks()["open"]

    def open_(peer):
        normal_open(peer)
        if peer.request.args.get("fail"):
            raise boom

    server = make_server(start_server, rec, hooks={"open": open_})
    other = connect(server)
    rec.peers.get(timeout=5)

    failing = connect(server, "/_ws?fail=1")
    assert recv_close(failing) == (1011, "internal error")
    assert rec.errors.get(timeout=5) is boom
    assert rec.closes.get(timeout=5)[0] == 1011
    _assert_server_still_serves(server, other)
    other.close()


def test_message_hook_exception(start_server, rec):
    boom = Boom("message failed")
    normal_message = rec.hooks()["message"]
    calls: list = []

    def message(peer, msg):
        calls.append(msg.text())
        if msg.text() == "explode":
            raise boom
        normal_message(peer, msg)

    server = make_server(start_server, rec, hooks={"message": message})
    other = connect(server)
    failing = new_ws_client(server)
    failing.send("fine")
    assert failing.recv(timeout=5) == "fine"
    failing.send("explode")
    try:
        failing.send("after")  # arrives after the close frame was sent: not delivered
    except ConnectionClosed:
        pass  # the 1011 close frame was already processed by the client: it cannot send
    with pytest.raises(ConnectionClosed) as info:
        while True:
            failing.recv(timeout=5)
    assert info.value.rcvd.code == 1011
    errors = [rec.errors.get(timeout=5)]
    assert errors[0] is boom
    assert rec.closes.get(timeout=5)[0] == 1011
    assert "after" not in calls
    _assert_server_still_serves(server, other)
    other.close()
    assert rec.errors.empty()


def test_many_failing_peers_do_not_hurt_others(start_server, rec):
    def message(peer, msg):
        if msg.text() == "explode":
            raise Boom()
        peer.send(msg)

    server = make_server(start_server, rec, hooks={"message": message})
    other = connect(server)
    for _ in range(20):
        c = connect(server)
        c.send("explode")
        assert recv_close(c)[0] == 1011
        c.shutdown()
    assert sum(1 for _ in range(20) if isinstance(rec.errors.get(timeout=5), Boom)) == 20
    _assert_server_still_serves(server, other)
    other.close()


def test_close_hook_exception_is_reported(start_server, rec):
    boom = Boom("close failed")

    def close(peer, details):
        rec.closes.put((details.code, details.reason))
        raise boom

    server = make_server(start_server, rec, hooks={"close": close})
    other = connect(server)
    client = connect(server)
    client.close(4001, "bye")
    assert rec.closes.get(timeout=5) == (4001, "bye")
    assert rec.errors.get(timeout=5) is boom
    _assert_server_still_serves(server, other)
    other.close()


def test_error_hook_that_raises_does_not_break_the_server(start_server, rec):
    def error(peer, exc):
        rec.errors.put(exc)
        raise RuntimeError("error hook failed too")

    def message(peer, msg):
        if msg.text() == "explode":
            raise Boom()
        peer.send(msg)

    server = make_server(start_server, rec, hooks={"message": message, "error": error})
    other = connect(server)
    failing = connect(server)
    failing.send("explode")
    assert recv_close(failing)[0] == 1011
    assert isinstance(rec.errors.get(timeout=5), Boom)
    assert rec.closes.get(timeout=5)[0] == 1011
    _assert_server_still_serves(server, other)
    other.close()


def test_exception_without_error_hook_still_closes_1011(start_server):
    closes: queue.Queue = queue.Queue()

    def message(peer, msg):
        if msg.text() == "explode":
            raise Boom()
        peer.send(msg)

    app = App()
    app.get("/_ws", define_websocket_handler(message=message, close=lambda p, d: closes.put(d.code)))
    server = start_server(app)
    other = connect(server)
    failing = connect(server)
    failing.send("explode")
    assert recv_close(failing)[0] == 1011
    assert closes.get(timeout=5) == 1011
    other.send("ok")
    assert other.recv() == "ok"
    other.close()


def test_protocol_error_reaches_error_hook_and_closes_1002(rec, server):
    raw = RawClient(server)
    raw.sock.sendall(b"\x81\x02hi")  # unmasked client frame: a protocol violation
    frame = raw.read_frame()
    assert frame is not None and frame[0] == 0x8
    assert struct.unpack("!H", frame[1][:2])[0] == 1002
    assert rec.errors.get(timeout=5) is not None
    assert rec.closes.get(timeout=5)[0] == 1002
    raw.close()
