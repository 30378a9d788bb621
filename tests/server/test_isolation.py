"""One peer's failure stays that peer's: hook exceptions, half-closes, broken sockets.

Every test runs a crowd of well-behaved peers (:class:`Chatters`: 20 echo
loops in their own threads) next to the one that misbehaves, and checks at
the end that none of them saw an error, that they kept talking *while* the
failure happened, and that pub/sub still reaches all of them.  Failures are
asserted to be logged exactly once each, at ERROR, naming the peer.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import pytest

from syncws import define_websocket_handler
from syncws.protocol import OP_BINARY, OP_TEXT, encode_frame

from ..conftest import connect, wait_until
from ..support import RawClient, app_with, http_exchange, new_key, recv_close, status_of, upgrade_request

CHATTERS = 20


# -- the app ----------------------------------------------------------------------


@dataclass
class Events:
    """What the hooks saw; hooks only append, the test thread reads."""

    opened: dict = field(default_factory=dict)  # fail-mode -> [peer id]
    closed: list = field(default_factory=list)  # (peer id, close code)
    errors: list = field(default_factory=list)  # (peer id, exception)
    messages: list = field(default_factory=list)  # (peer id, text)
    peers: dict = field(default_factory=dict)  # peer id -> Peer

    def ids(self, mode: str) -> list:
        return list(self.opened.get(mode, ()))

    def closes_of(self, peer_id: str) -> list:
        return [code for pid, code in self.closed if pid == peer_id]


def isolation_app(events: Events, **server_side):
    """Echo (``echo:<text>``) on ``/_ws``; ``?fail=<hook>`` makes that hook raise for that peer.

    The message hook raises only on the text ``boom``; ``flood:<n>:<size>``
    makes the server send ``n`` binary messages of ``size`` bytes at once.
    """

    def upgrade(request):
        fail = request.args.get("fail", "")
        if fail == "upgrade":
            raise RuntimeError("upgrade hook failure")
        return {"context": {"fail": fail}}

    def open_(peer):
        events.opened.setdefault(peer.context["fail"], []).append(peer.id)
        events.peers[peer.id] = peer
        peer.subscribe("room")
        if peer.context["fail"] == "open":
            raise RuntimeError("open hook failure")

    def message(peer, msg):
        text = msg.text()
        events.messages.append((peer.id, text))
        if text == "boom" and peer.context["fail"] in ("message", "message+error"):
            raise RuntimeError("message hook failure")
        if text.startswith("flood:"):
            _, count, size = text.split(":")
            chunk = b"x" * int(size)
            for _ in range(int(count)):
                peer.send(chunk)
            return
        peer.send("echo:" + text)

    def close(peer, details):
        events.closed.append((peer.id, details.code))
        if peer.context["fail"] == "close":
            raise RuntimeError("close hook failure")

    def error(peer, exc):
        events.errors.append((peer.id, exc))
        if peer.context["fail"] in ("error", "message+error"):
            raise RuntimeError("error hook failure")

    return app_with(
        handler=define_websocket_handler(upgrade=upgrade, open=open_, message=message, close=close, error=error)
    )


# -- the well-behaved crowd -----------------------------------------------------------


class Chatters:
    """``n`` websocket-client peers, each echoing numbered messages in its own thread."""

    def __init__(self, server, events: Events, n: int = CHATTERS) -> None:
        before = set(events.ids(""))
        self.clients = [connect(server, f"/_ws?name=c{i}") for i in range(n)]
        assert wait_until(lambda: len(set(events.ids("")) - before) >= n)
        self.ids = set(events.ids("")) - before
        self.counts = [0] * n
        self.errors: list = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]
        for thread in self._threads:
            thread.start()

    def _run(self, i: int) -> None:
        client = self.clients[i]
        n = 0
        try:
            while not self._stop.is_set():
                text = f"c{i}-{n}"
                client.send(text)
                reply = client.recv()
                if reply != "echo:" + text:
                    self.errors.append((i, text, reply))
                    return
                n += 1
                self.counts[i] = n
                time.sleep(0.005)
        except Exception as exc:
            self.errors.append((i, repr(exc)))

    def total(self) -> int:
        return sum(self.counts)

    def progressed_since(self, snapshot: list) -> bool:
        """Every chatter sent and got back at least one more message since ``snapshot``."""
        return all(now > then for now, then in zip(self.counts, snapshot, strict=False))

    def wait_progress(self, timeout: float = 5.0) -> None:
        snapshot = list(self.counts)
        assert wait_until(lambda: self.progressed_since(snapshot) or self.errors, timeout)
        assert not self.errors, self.errors
        assert self.progressed_since(snapshot), (snapshot, self.counts)

    def finish(self, server) -> None:
        """Stop chatting; check no errors, then that a publish reaches every chatter."""
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        assert not any(t.is_alive() for t in self._threads), "a chatter hung"
        assert not self.errors, self.errors
        assert all(count > 0 for count in self.counts), self.counts
        server.publish("room", "all-still-here")
        for client in self.clients:
            assert client.recv() == "all-still-here"
        for client in self.clients:
            client.close()


def watch_hub(server) -> list:
    """Record what reaches the server hub's ``handle_error`` (a greenlet died of an exception).

    gevent prints those to stderr, where caplog cannot see them.
    """
    hub = server.runtime.bridge.hub
    seen: list = []
    original = hub.handle_error

    def handle_error(context, type_, value, tb):
        seen.append((context, type_, value))
        original(context, type_, value, tb)

    hub.handle_error = handle_error
    return seen


def error_records(caplog) -> list:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture
def world(start_server, caplog):
    """(server, events, chatters): the app served, 20 chatters talking; checked at teardown."""
    caplog.set_level(logging.INFO, logger="syncws")
    events = Events()
    server = start_server(isolation_app(events), max_buffer_size=64 * 1024 * 1024)
    hub_errors = watch_hub(server)
    chatters = Chatters(server, events)
    chatters.wait_progress()
    yield server, events, chatters
    chatters.finish(server)
    assert not hub_errors, hub_errors


def drop_rst(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- exceptions in hooks ---------------------------------------------------------------

FAILURES = 3  # each failure is provoked this many times, by a new peer each time


def test_upgrade_hook_exception_answers_500_and_logs_once(world, caplog):
    server, events, chatters = world
    for _ in range(FAILURES):
        data = http_exchange(server, upgrade_request("/_ws?fail=upgrade", key=new_key()))
        assert status_of(data) == 500
        assert b"Sec-WebSocket-Accept" not in data
    chatters.wait_progress()
    records = error_records(caplog)
    assert len(records) == FAILURES, [r.getMessage() for r in records]
    for record in records:
        # No peer exists yet: the line names the request instead.
        assert "upgrade hook" in record.getMessage() and "/_ws" in record.getMessage()
        assert record.exc_info and "upgrade hook failure" in str(record.exc_info[1])
    assert "upgrade" not in events.opened


def test_open_hook_exception_closes_that_peer_with_1011(world, caplog):
    server, events, chatters = world
    for _ in range(FAILURES):
        client = connect(server, "/_ws?fail=open")
        assert recv_close(client) == (1011, "internal error")
        client.close()
    chatters.wait_progress()
    ids = events.ids("open")
    assert len(ids) == FAILURES
    assert wait_until(lambda: all(events.closes_of(pid) == [1011] for pid in ids)), events.closed
    assert_logged_once_each(caplog, ids, "open hook failure")
    assert [pid for pid, _ in events.errors] == ids  # the error hook heard of each one


def test_message_hook_exception_closes_that_peer_with_1011(world, caplog):
    server, events, chatters = world
    for _ in range(FAILURES):
        client = connect(server, "/_ws?fail=message")
        client.send("fine")
        assert client.recv() == "echo:fine"
        client.send("boom")
        assert recv_close(client) == (1011, "internal error")
        client.close()
    chatters.wait_progress()
    ids = events.ids("message")
    assert wait_until(lambda: all(events.closes_of(pid) == [1011] for pid in ids)), events.closed
    assert_logged_once_each(caplog, ids, "message hook failure")


def test_close_hook_exception_is_logged_once(world, caplog):
    server, events, chatters = world
    for _ in range(FAILURES):
        client = connect(server, "/_ws?fail=close")
        client.send("hi")
        assert client.recv() == "echo:hi"
        client.close(1000)
    ids = events.ids("close")
    assert wait_until(lambda: all(events.closes_of(pid) == [1000] for pid in ids)), events.closed
    chatters.wait_progress()
    assert_logged_once_each(caplog, ids, "close hook failure")


def test_error_hook_exception_is_logged_once(world, caplog):
    """The error hook raising while it reports a protocol error: one line; the peer still gets its 1002."""
    server, events, chatters = world
    for _ in range(FAILURES):
        with RawClient(server, "/_ws?fail=error") as client:
            client.sock.sendall(encode_frame(OP_TEXT, b"not masked"))
            frames = client.read_all_frames()
        assert frames and frames[-1][0] == 0x8
        assert struct.unpack("!H", frames[-1][1][:2])[0] == 1002
    chatters.wait_progress()
    ids = events.ids("error")
    assert wait_until(lambda: all(events.closes_of(pid) == [1002] for pid in ids)), events.closed
    assert_logged_once_each(caplog, ids, "error hook failure")


def test_message_and_error_hook_both_raising_is_two_lines(world, caplog):
    server, events, chatters = world
    client = connect(server, "/_ws?fail=message%2Berror")
    client.send("boom")
    assert recv_close(client) == (1011, "internal error")
    client.close()
    chatters.wait_progress()
    [pid] = events.ids("message+error")
    assert wait_until(lambda: events.closes_of(pid) == [1011])
    records = error_records(caplog)
    assert sorted(str(r.exc_info[1]) for r in records) == ["error hook failure", "message hook failure"]
    assert all(pid in r.getMessage() for r in records)


def assert_logged_once_each(caplog, ids: list, text: str) -> None:
    """Exactly one ERROR record per failing peer, naming it, with the hook's traceback."""
    records = error_records(caplog)
    assert len(records) == len(ids), [r.getMessage() for r in records]
    for pid in ids:
        mine = [r for r in records if pid in r.getMessage()]
        assert len(mine) == 1, (pid, [r.getMessage() for r in records])
        assert mine[0].exc_info is not None and text in str(mine[0].exc_info[1])


# -- half-closed clients ------------------------------------------------------------------


def _half_close_after_handshake(client: RawClient) -> None:
    """Nothing at all after the 101."""


def _half_close_after_message(client: RawClient) -> None:
    client.send_frame(OP_TEXT, b"last words")


def _half_close_mid_header(client: RawClient) -> None:
    client.sock.sendall(encode_frame(OP_TEXT, b"x" * 300, mask=b"abcd")[:3])  # 126-length header, cut


def _half_close_mid_payload(client: RawClient) -> None:
    client.sock.sendall(encode_frame(OP_BINARY, b"y" * 1000, mask=b"abcd")[:200])


def _half_close_mid_fragmented_message(client: RawClient) -> None:
    client.send_frame(OP_TEXT, b"first half ", fin=False)


HALF_CLOSES = {
    "after-handshake": (_half_close_after_handshake, []),
    "after-a-message": (_half_close_after_message, ["last words"]),
    "mid-frame-header": (_half_close_mid_header, []),
    "mid-payload": (_half_close_mid_payload, []),
    "mid-fragmented-message": (_half_close_mid_fragmented_message, []),
}


@pytest.mark.parametrize("when", list(HALF_CLOSES))
def test_half_close_is_a_1006_for_that_peer_only(world, caplog, when):
    server, events, chatters = world
    before = set(events.ids(""))
    send, expected_messages = HALF_CLOSES[when]
    client = RawClient(server)
    assert wait_until(lambda: set(events.ids("")) - before)
    [pid] = set(events.ids("")) - before
    peer = events.peers[pid]
    send(client)
    client.sock.shutdown(socket.SHUT_WR)
    # The server sees EOF: no close frame was sent, so it hangs up without one.
    client.sock.settimeout(5)
    leftovers = client.read_to_eof()
    client.close()
    assert wait_until(lambda: events.closes_of(pid)), f"close hook did not run after a half-close {when}"
    assert events.closes_of(pid) == [1006]
    assert peer not in server.peers
    assert b"\x88" not in leftovers[:1]  # whatever came back, it was not a close frame
    chatters.wait_progress()
    assert [text for p, text in events.messages if p == pid] == expected_messages
    assert not error_records(caplog), [r.getMessage() for r in error_records(caplog)]


@pytest.mark.parametrize("cut", [0, 7, 30, -2])
def test_half_close_during_the_http_handshake(world, caplog, cut):
    """A request cut short (nothing, mid request line, mid headers, no blank line) then SHUT_WR."""
    server, events, chatters = world
    before = set(events.ids(""))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(upgrade_request(key=new_key())[:cut])
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    chatters.wait_progress()
    if cut == 0:
        assert data == b""
    elif data.startswith(b"HTTP/1.1 101 "):
        # gevent takes EOF as the end of the head, so a head that lacks only its
        # blank line is upgraded; the session then reads EOF at once.
        assert cut == -2
        assert wait_until(lambda: set(events.ids("")) - before)
        [pid] = set(events.ids("")) - before
        assert wait_until(lambda: events.closes_of(pid) == [1006])
    else:
        assert data == b"" or 400 <= status_of(data) < 500, data
        assert set(events.ids("")) == before
    assert len(server.peers) == CHATTERS
    assert not error_records(caplog), [r.getMessage() for r in error_records(caplog)]


# -- broken sockets ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["rst", "fin"])
def test_socket_broken_mid_write_affects_only_that_peer(world, caplog, how):
    """A peer that stops reading gets megabytes queued, then its socket breaks under the writer."""
    server, events, chatters = world
    before = set(events.ids(""))
    slow = RawClient(server, rcvbuf=4096)
    assert wait_until(lambda: set(events.ids("")) - before)
    [pid] = set(events.ids("")) - before
    peer = events.peers[pid]
    slow.send_frame(OP_TEXT, b"flood:64:131072")  # 8 MiB the client never reads
    assert wait_until(lambda: peer.buffered_amount > 4 * 1024 * 1024), peer.buffered_amount
    outbox = peer.websocket.outbox
    # The writer greenlet starts once the socket stops taking whole writes.
    assert wait_until(lambda: outbox._writer is not None and not outbox._writer.dead)
    writer = outbox._writer  # blocked in sendall on the full socket
    snapshot = list(chatters.counts)
    if how == "rst":
        drop_rst(slow.sock)
    else:
        slow.sock.close()  # unread data in our buffer: Linux answers with an RST too
    assert wait_until(lambda: events.closes_of(pid)), "close hook did not run"
    assert wait_until(lambda: writer.dead)
    assert peer not in server.peers
    assert peer.buffered_amount == 0
    assert wait_until(lambda: chatters.progressed_since(snapshot))
    chatters.wait_progress()
    time.sleep(0.2)  # a second close-hook call would show up here
    assert events.closes_of(pid) == [1006]
    assert not error_records(caplog), [r.getMessage() for r in error_records(caplog)]


def test_broken_subscriber_does_not_hold_up_a_broadcast(world, caplog):
    """Big publishes to a topic where one subscriber's socket is reset mid-stream."""
    server, events, chatters = world
    opened = len(events.ids(""))
    listeners = [connect(server, f"/_ws?name=listener{i}") for i in range(3)]
    assert wait_until(lambda: len(events.ids("")) == opened + 3)  # their open hooks ran
    before = set(events.ids(""))
    slow = RawClient(server, rcvbuf=4096)
    assert wait_until(lambda: len(set(events.ids("")) - before) == 1)
    [pid] = set(events.ids("")) - before
    payload = b"z" * 200_000  # binary: websocket-client validates text in pure Python
    # "room" has every peer: the chatters ignore nothing, so publish on a topic of our own.
    for peer_id in list(set(events.ids("")) - set(chatters.ids)):
        events.peers[peer_id].subscribe("big")
    assert wait_until(lambda: len(server.registry.subscribers("big")) == 4)
    slow_peer = events.peers[pid]
    sent = 0
    while slow_peer.buffered_amount == 0:  # until the kernel buffers are full and ours fills
        server.publish("big", payload)
        sent += 1
        assert sent < 200
        time.sleep(0.01)
    drop_rst(slow.sock)
    for _ in range(10):
        server.publish("big", payload)
    sent += 10
    for client in listeners:
        for _ in range(sent):
            assert client.recv() == payload
    assert wait_until(lambda: events.closes_of(pid) == [1006])
    chatters.wait_progress()
    for client in listeners:
        client.close()
    assert not error_records(caplog), [r.getMessage() for r in error_records(caplog)]


def test_abrupt_drops_at_every_stage_do_not_disturb_others(world, caplog):
    """Resets before the request, mid-request, right after the 101 and mid-frame, many times over."""
    server, _events, chatters = world
    request = upgrade_request(key=new_key())
    for i in range(50):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        stage = i % 4
        if stage == 1:
            sock.sendall(request[: len(request) // 2])
        elif stage >= 2:
            sock.sendall(request)
            assert sock.recv(4096).startswith(b"HTTP/1.1 101")
            if stage == 3:
                sock.sendall(encode_frame(OP_TEXT, b"q" * 500, mask=b"abcd")[:100])
        drop_rst(sock)
    chatters.wait_progress()
    assert wait_until(lambda: len(server.peers) == CHATTERS)
    assert not error_records(caplog), [r.getMessage() for r in error_records(caplog)]
    # and the server still accepts, as always
    client = connect(server)
    client.send("after")
    assert client.recv() == "echo:after"
    client.close()


def test_exception_in_an_http_view_does_not_stop_the_server(start_server, caplog):
    caplog.set_level(logging.INFO, logger="syncws")
    events = Events()
    app = isolation_app(events)

    def broken(request):
        raise RuntimeError("view failure")

    app.get("/broken", broken)
    server = start_server(app)
    chatters = Chatters(server, events, n=5)
    for _ in range(3):
        assert status_of(http_exchange(server, b"GET /broken HTTP/1.1\r\nHost: x\r\n\r\n")) == 500
    chatters.wait_progress()
    chatters.finish(server)
    records = error_records(caplog)
    assert len(records) == 3 and all("/broken" in r.getMessage() for r in records)


def test_sys_exit_in_a_hook_is_an_error_not_the_end_of_the_server(start_server):
    import sys as _sys

    from syncws import App, define_websocket_handler

    from ..conftest import connect
    from ..support import recv_close

    app = App()

    def message(peer, msg):
        if msg.text() == "exit":
            _sys.exit(3)
        peer.send(msg)

    app.get("/_ws", define_websocket_handler(message=message))
    server = start_server(app)
    other = connect(server)
    victim = connect(server)
    victim.send("exit")
    assert recv_close(victim)[0] == 1011
    other.send("still here")
    assert other.recv() == "still here"
    fresh = connect(server)  # and the server still accepts
    fresh.send("hi")
    assert fresh.recv() == "hi"
    for client in (other, fresh):
        client.close()


def test_a_half_closed_client_still_gets_what_its_message_queued(start_server):
    import socket as _socket

    from syncws import App, define_websocket_handler
    from syncws.protocol import OP_TEXT

    from ..support import RawClient

    app = App()
    app.get("/_ws", define_websocket_handler(message=lambda peer, msg: peer.send(msg)))
    server = start_server(app)
    with RawClient(server, "/_ws") as client:
        client.send_frame(OP_TEXT, b"last words")
        client.sock.shutdown(_socket.SHUT_WR)
        frames = client.read_all_frames()
    assert frames and frames[0] == (OP_TEXT, b"last words")
