"""Keepalive: the server pings silent peers and closes the ones that stop answering (1011)."""

from __future__ import annotations

import itertools
import struct
import threading
import time

import pytest
import websocket

from syncws import App, define_websocket_handler
from syncws.protocol import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT

from ..conftest import connect, wait_until
from ..support import RawClient

# Real time: the rules themselves are unit-tested with a fake clock (tests/protocol/test_connection.py).
pytestmark = pytest.mark.slow

INTERVAL = 0.2
TIMEOUT = 0.3


def keepalive_app(closed: list, **handler_options) -> App:
    app = App()

    def on_message(peer, message):
        peer.send(message.text())

    def on_close(peer, details):
        closed.append((time.monotonic(), details.code, details.reason))

    app.get("/_ws", define_websocket_handler(message=on_message, close=on_close, **handler_options))
    return app


def read_frames_for(client: RawClient, seconds: float, answer_pings: bool) -> list:
    """Every (time, opcode, payload) received within ``seconds``; pongs sent back if asked."""
    frames = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        client.sock.settimeout(left)
        try:
            frame = client.read_frame()
        except TimeoutError:
            break
        if frame is None:
            break
        frames.append((time.monotonic(), *frame))
        if frame[0] == OP_PING and answer_pings:
            client.send_frame(OP_PONG, frame[1])
    client.sock.settimeout(5)
    return frames


def test_the_server_pings_a_silent_peer_every_interval(start_server):
    closed: list = []
    server = start_server(keepalive_app(closed), ping_interval=INTERVAL, ping_timeout=TIMEOUT)
    with RawClient(server) as client:
        started = time.monotonic()
        frames = read_frames_for(client, 1.3, answer_pings=True)
        pings = [t - started for t, opcode, _ in frames if opcode == OP_PING]
        # One ping per interval of silence (give or take a tick): about 6 in 1.3 s.
        assert 3 <= len(pings) <= 7, pings
        assert pings[0] >= INTERVAL * 0.9
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert all(gap >= INTERVAL * 0.9 for gap in gaps), gaps
        # Answered every time: still open, still echoing.
        client.send_frame(OP_TEXT, b"alive")
        frames = read_frames_for(client, 0.5, answer_pings=True)
        assert (OP_TEXT, b"alive") in [(opcode, payload) for _, opcode, payload in frames]
    assert wait_until(lambda: closed)
    assert closed[0][1] == 1006  # the client just went away: not a keepalive close


def test_a_peer_that_never_answers_is_closed_with_1011(start_server):
    closed: list = []
    # close_timeout stays at its 5 s default: a dead peer must not make us wait for it.
    server = start_server(keepalive_app(closed), ping_interval=INTERVAL, ping_timeout=TIMEOUT)
    with RawClient(server) as client:
        started = time.monotonic()
        frames = client.read_all_frames()  # never answers; returns when the server hangs up
        ended = time.monotonic() - started
    opcodes = [opcode for opcode, _ in frames]
    assert opcodes == [OP_PING, OP_CLOSE], frames
    code = struct.unpack("!H", frames[-1][1][:2])[0]
    assert code == 1011
    assert frames[-1][1][2:] == b"keepalive ping timeout"
    # interval + timeout + a few ticks, not the 5 s close_timeout.
    assert INTERVAL + TIMEOUT - 0.05 <= ended < 2.0, ended
    assert wait_until(lambda: closed, timeout=2)
    _, code, reason = closed[0]
    assert (code, reason) == (1011, "keepalive ping timeout")
    assert closed[0][0] - started < 2.5
    assert server.peers == frozenset()


def test_a_websocket_client_library_that_answers_stays_open(start_server):
    """websocket-client answers pings while it reads, as browsers do."""
    closed: list = []
    server = start_server(keepalive_app(closed), ping_interval=INTERVAL, ping_timeout=TIMEOUT)
    client = connect(server)
    pings: list = []
    try:
        deadline = time.monotonic() + 1.2  # several intervals
        client.settimeout(0.1)
        while time.monotonic() < deadline:
            try:
                opcode, data = client.recv_data(control_frame=True)  # answers each ping with a pong
            except websocket.WebSocketTimeoutException:
                continue
            if opcode == websocket.ABNF.OPCODE_PING:
                pings.append(data)
        assert len(pings) >= 3
        client.settimeout(5)
        client.send("still open")
        while (opcode_data := client.recv_data(control_frame=True))[0] != websocket.ABNF.OPCODE_TEXT:
            pass
        assert opcode_data[1] == b"still open"
        assert closed == []
    finally:
        client.close()


def test_any_frame_after_the_ping_counts_as_an_answer(start_server):
    closed: list = []
    server = start_server(keepalive_app(closed), ping_interval=INTERVAL, ping_timeout=0.5)
    with RawClient(server) as client:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            client.send_frame(OP_TEXT, b"busy")  # every 0.25 s, never a pong
            frames = read_frames_for(client, 0.25, answer_pings=False)
            assert OP_CLOSE not in [opcode for _, opcode, _ in frames]
        client.send_frame(OP_TEXT, b"last")
        frames = read_frames_for(client, 0.3, answer_pings=False)
        assert (OP_TEXT, b"last") in [(opcode, payload) for _, opcode, payload in frames]
    assert wait_until(lambda: closed)
    assert closed[0][1] == 1006


def test_a_client_ping_gets_a_pong_with_its_payload(start_server):
    closed: list = []
    server = start_server(keepalive_app(closed), ping_interval=None)
    with RawClient(server) as client:
        client.send_frame(OP_PING, b"are you there")
        assert client.read_frame() == (OP_PONG, b"are you there")
        client.send_frame(OP_PING, b"")
        assert client.read_frame() == (OP_PONG, b"")
        # Unsolicited pongs are ignored (no answer, no close).
        client.send_frame(OP_PONG, b"heartbeat")
        client.send_frame(OP_TEXT, b"after")
        assert client.read_frame() == (OP_TEXT, b"after")


def test_ping_interval_none_sends_no_pings(start_server):
    closed: list = []
    server = start_server(keepalive_app(closed), ping_interval=None, ping_timeout=0.1)
    with RawClient(server) as client:
        assert read_frames_for(client, 0.7, answer_pings=False) == []
        client.send_frame(OP_TEXT, b"fine")
        assert client.read_frame() == (OP_TEXT, b"fine")


def test_ping_timeout_none_keeps_pinging_an_unanswering_peer(start_server):
    closed: list = []
    server = start_server(keepalive_app(closed), ping_interval=INTERVAL, ping_timeout=None)
    with RawClient(server) as client:
        frames = read_frames_for(client, 1.0, answer_pings=False)
        opcodes = [opcode for _, opcode, _ in frames]
        assert OP_CLOSE not in opcodes
        assert opcodes.count(OP_PING) >= 3  # NAT-friendly pings, never a timeout
        client.send_frame(OP_TEXT, b"here")
        frames = read_frames_for(client, 0.3, answer_pings=False)
        assert (OP_TEXT, b"here") in [(opcode, payload) for _, opcode, payload in frames]
    assert closed == [] or closed[0][1] == 1006


@pytest.mark.parametrize("server_interval", [None, 30.0])
def test_per_handler_ping_settings_override_the_server(start_server, server_interval):
    closed: list = []
    app = keepalive_app(closed)
    app.get(
        "/fast",
        define_websocket_handler(
            close=lambda peer, details: closed.append(("fast", details.code)),
            ping_interval=INTERVAL,
            ping_timeout=TIMEOUT,
        ),
    )
    server = start_server(app, ping_interval=server_interval, ping_timeout=30.0)
    with RawClient(server) as slow, RawClient(server, "/fast") as fast:
        frames = fast.read_all_frames()
        assert [opcode for opcode, _ in frames] == [OP_PING, OP_CLOSE]
        assert read_frames_for(slow, 0.2, answer_pings=False) == []  # the server-wide setting
    assert wait_until(lambda: ("fast", 1011) in closed)


def test_many_silent_peers_are_all_pinged_and_dropped(start_server):
    closed: list = []
    server = start_server(keepalive_app(closed), ping_interval=INTERVAL, ping_timeout=TIMEOUT)
    clients = [RawClient(server) for _ in range(20)]
    try:
        results: list = []

        def drain(client):
            results.append([opcode for opcode, _ in client.read_all_frames()])

        threads = [threading.Thread(target=drain, args=(c,), daemon=True) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=5)
        assert len(results) == 20
        assert all(r == [OP_PING, OP_CLOSE] for r in results), results
        assert wait_until(lambda: len(closed) == 20, timeout=3)
        assert {code for _, code, _ in closed} == {1011}
    finally:
        for client in clients:
            client.close()
