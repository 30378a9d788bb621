"""Closing in both directions, dropped connections, and hooks that raise."""

from __future__ import annotations

import base64
import os
import queue
import socket
import struct
import time

import pytest
import requests
import websocket
from websocket import ABNF
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.sync.client import connect as ws_connect

from syncws import App, define_websocket_handler

from .conftest import connect, wait_until, ws_url


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


def new_ws_client(server, path="/_ws"):
    return ws_connect(
        ws_url(server, path), proxy=None, compression=None, open_timeout=5, close_timeout=5, legacy=True
    )


def recv_close(client: websocket.WebSocket) -> tuple:
    """websocket-client: read until the server's close frame; return (code, reason)."""
    while True:
        opcode, data = client.recv_data(True)
        if opcode == ABNF.OPCODE_CLOSE:
            code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
            return code, data[2:].decode("utf-8")


# -- raw socket client -------------------------------------------------------


class RawClient:
    def __init__(self, server, path="/_ws"):
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
            ).encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(4096)
            assert chunk, "connection closed during the handshake"
            data += chunk
        head, _, self.buf = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def send_frame(self, opcode: int, payload: bytes = b"", fin: bool = True) -> None:
        mask = os.urandom(4)
        first = (0x80 if fin else 0) | opcode
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", first, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", first, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", first, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def read_frame(self):
        """Return (opcode, payload), or None on EOF."""
        if not self._fill(2):
            return None
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            if not self._fill(4):
                return None
            n = struct.unpack("!H", self.buf[2:4])[0]
            pos = 4
        elif n == 127:
            if not self._fill(10):
                return None
            n = struct.unpack("!Q", self.buf[2:10])[0]
            pos = 10
        assert not b1 & 0x80, "server frames are never masked"
        if not self._fill(pos + n):
            return None
        payload = self.buf[pos : pos + n]
        self.buf = self.buf[pos + n :]
        return b0 & 0x0F, payload

    def read_all_frames(self) -> list:
        frames = []
        while True:
            frame = self.read_frame()
            if frame is None:
                return frames
            frames.append(frame)

    def close(self):
        self.sock.close()


# -- client-initiated close --------------------------------------------------


def test_client_close_with_code_and_reason(start_server):
    rec = Recorder()
    server = make_server(start_server, rec)
    client = connect(server)
    rec.peers.get(timeout=5)
    client.close(4001, "bye")
    assert rec.closes.get(timeout=5) == (4001, "bye")
    # The server echoed the code in its close frame.
    assert client.close_frame is not None
    assert struct.unpack("!H", client.close_frame.data[:2])[0] == 4001
    assert rec.close_states == [(False, False, frozenset())]
    assert rec.errors.empty()


def test_client_close_with_non_ascii_reason(start_server):
    rec = Recorder()
    server = make_server(start_server, rec)
    client = new_ws_client(server)
    rec.peers.get(timeout=5)
    client.close(4003, "au revoir ✓")
    assert rec.closes.get(timeout=5) == (4003, "au revoir ✓")


def test_client_close_without_payload_gives_none_none(start_server):
    rec = Recorder()
    server = make_server(start_server, rec)
    client = connect(server)
    rec.peers.get(timeout=5)
    client.send(b"", opcode=ABNF.OPCODE_CLOSE)
    opcode, frame = client.recv_data_frame(True)
    assert opcode == ABNF.OPCODE_CLOSE
    assert frame.data == b""  # "no status" is answered with an empty close frame
    assert rec.closes.get(timeout=5) == (None, None)
    client.shutdown()


def test_client_close_via_websockets_library(start_server):
    rec = Recorder()
    server = make_server(start_server, rec)
    with new_ws_client(server) as client:
        client.send("hi")
        assert client.recv(timeout=5) == "hi"
        client.close(1000, "normal")
        assert client.close_code == 1000
    assert rec.closes.get(timeout=5) == (1000, "normal")


def test_client_drops_tcp_without_close(start_server):
    rec = Recorder()
    server = make_server(start_server, rec)
    client = connect(server)
    client.send("hi")
    assert client.recv() == "hi"
    client.shutdown()  # closes the socket, no close frame
    assert rec.closes.get(timeout=5) == (1006, "")
    assert wait_until(lambda: not server.peers)
    assert rec.close_states == [(False, False, frozenset())]


def test_client_drops_tcp_in_the_middle_of_a_frame(start_server):
    rec = Recorder()
    server = make_server(start_server, rec)
    raw = RawClient(server)
    raw.sock.sendall(b"\x81\x85\x00\x00\x00\x00he")  # 5-byte text frame, only 2 bytes sent
    raw.close()
    assert rec.closes.get(timeout=5) == (1006, "")


# -- server-initiated close --------------------------------------------------


def test_server_close_with_code_and_reason(start_server):
    rec = Recorder()
    server = make_server(start_server, rec)
    client = new_ws_client(server)
    client.send("close:4002:server bye")
    with pytest.raises(ConnectionClosed) as info:
        client.recv(timeout=5)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4002, "server bye")
    assert (client.close_code, client.close_reason) == (4002, "server bye")
    assert rec.closes.get(timeout=5) == (4002, "server bye")
    assert rec.errors.empty()


def test_server_close_seen_by_websocket_client(start_server):
    rec = Recorder()
    server = make_server(start_server, rec)
    client = connect(server)
    client.send("close:4002:server bye")
    assert recv_close(client) == (4002, "server bye")
    assert rec.closes.get(timeout=5) == (4002, "server bye")


def test_server_close_default_is_1000(start_server):
    rec = Recorder()
    server = make_server(start_server, rec)
    client = new_ws_client(server)
    client.send("close-default")
    with pytest.raises(ConnectionClosed) as info:
        client.recv(timeout=5)
    assert info.value.rcvd.code == 1000
    assert info.value.rcvd.reason == ""
    assert rec.closes.get(timeout=5) == (1000, "")


def test_server_close_from_outside_a_hook(start_server):
    rec = Recorder()
    server = make_server(start_server, rec)
    client = connect(server)
    peer = rec.peers.get(timeout=5)
    peer.close(4005, "from test thread")
    assert recv_close(client) == (4005, "from test thread")
    assert rec.closes.get(timeout=5) == (4005, "from test thread")


def test_server_close_when_client_never_answers(start_server):
    """The server hangs up after close_timeout; the details are what it sent."""
    rec = Recorder()
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


def test_data_after_server_close_is_not_delivered_to_hooks(start_server):
    rec = Recorder()
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


def test_close_all(start_server):
    rec = Recorder()
    server = make_server(start_server, rec)
    clients = [new_ws_client(server) for _ in range(3)]
    for _ in clients:
        rec.peers.get(timeout=5)
    server.close_all(4010, "maintenance")
    for client in clients:
        with pytest.raises(ConnectionClosed) as info:
            client.recv(timeout=5)
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4010, "maintenance")
    assert sorted(rec.closes.get(timeout=5) for _ in clients) == [(4010, "maintenance")] * 3
    assert wait_until(lambda: not server.peers)


def test_server_stop_closes_peers_with_1001(start_server):
    rec = Recorder()
    server = make_server(start_server, rec)
    client = new_ws_client(server)
    rec.peers.get(timeout=5)
    server.stop(timeout=2)
    with pytest.raises(ConnectionClosed) as info:
        client.recv(timeout=5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert rec.closes.get(timeout=5)[0] == 1001


def test_send_after_close_is_harmless(start_server):
    rec = Recorder()

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


def test_terminate_drops_without_close_frame_websockets(start_server):
    rec = Recorder()
    server = make_server(start_server, rec)
    client = new_ws_client(server)
    client.send("hi")
    assert client.recv(timeout=5) == "hi"
    client.send("terminate")
    with pytest.raises(ConnectionClosedError) as info:
        client.recv(timeout=5)
    assert info.value.rcvd is None  # no close frame was received
    assert client.close_code == 1006
    assert rec.closes.get(timeout=5) == (1006, "")
    assert wait_until(lambda: not server.peers)


def test_terminate_drops_without_close_frame_raw(start_server):
    rec = Recorder()
    server = make_server(start_server, rec)
    raw = RawClient(server)
    raw.send_frame(0x1, b"hello")
    assert raw.read_frame() == (0x1, b"hello")
    raw.send_frame(0x1, b"terminate")
    frames = raw.read_all_frames()
    assert frames == []  # EOF, and no close frame before it
    assert rec.closes.get(timeout=5) == (1006, "")
    raw.close()


def test_terminate_from_another_thread(start_server):
    rec = Recorder()
    server = make_server(start_server, rec)
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


def test_open_hook_exception(start_server):
    rec = Recorder()
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


def test_message_hook_exception(start_server):
    rec = Recorder()
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
    failing.send("after")  # arrives after the close frame was sent: not delivered
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


def test_many_failing_peers_do_not_hurt_others(start_server):
    rec = Recorder()

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


def test_close_hook_exception_is_reported(start_server):
    rec = Recorder()
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


def test_error_hook_that_raises_does_not_break_the_server(start_server):
    rec = Recorder()

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


def test_protocol_error_reaches_error_hook_and_closes_1002(start_server):
    rec = Recorder()
    server = make_server(start_server, rec)
    raw = RawClient(server)
    raw.sock.sendall(b"\x81\x02hi")  # unmasked client frame: a protocol violation
    frame = raw.read_frame()
    assert frame is not None and frame[0] == 0x8
    assert struct.unpack("!H", frame[1][:2])[0] == 1002
    assert rec.errors.get(timeout=5) is not None
    assert rec.closes.get(timeout=5)[0] == 1002
    raw.close()
