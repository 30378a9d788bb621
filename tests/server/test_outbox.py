"""Fan-out under load: a peer that never reads must not hold anyone else up.

The slow subscriber is a raw socket with a tiny receive buffer that completes
the handshake and then never calls ``recv()``.  The readers are ordinary
websocket-client connections, each read by its own thread.  The publisher is
paced by the *readers'* progress (it never runs more than a small window
ahead of the slowest reader), so the readers' own buffers stay far below the
limit: if delivery to them were held up by the slow peer, the pacing wait
would time out and the test would fail.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from syncws import App, define_websocket_handler

from ..conftest import connect, wait_until
from ..support import RawClient

MESSAGE_SIZE = 16 * 1024
FRAME_OVERHEAD = 4  # 2-byte header + 2-byte extended length for 126..65535 bytes
COUNT = 200
WINDOW = 8  # the publisher runs at most this many messages ahead of the slowest reader


def payload(i: int) -> bytes:
    head = f"{i:06d}".encode()
    return head + bytes([i % 251]) * (MESSAGE_SIZE - len(head))


def index_of(data: bytes) -> int:
    return int(data[:6])


class FeedState:
    """Everything the hooks observe, appended from the server thread."""

    def __init__(self) -> None:
        self.peers: dict = {}  # role -> list of peers
        self.closes: list = []  # (role, code, reason)
        self.samples: list = []  # slow peers' buffered_amount after each fan-out
        self.errors: list = []

    def slow_peers(self) -> list:
        return list(self.peers.get("slow", ()))


def feed_app(state: FeedState) -> App:
    def upgrade(request):
        return {"context": {"role": request.args.get("role", "reader")}}

    def open_(peer):
        role = peer.context["role"]
        if role in ("reader", "slow"):
            peer.subscribe("feed")
        state.peers.setdefault(role, []).append(peer)

    def message(peer, msg):
        peer.publish("feed", msg)
        # Sample right after the fan-out, when the buffers are fullest.
        state.samples.extend(p.buffered_amount for p in state.slow_peers())

    def close(peer, details):
        state.closes.append((peer.context["role"], details.code, details.reason))

    def error(peer, exc):
        state.errors.append(exc)

    app = App()
    app.get("/feed", define_websocket_handler(upgrade=upgrade, open=open_, message=message, close=close, error=error))
    return app


def slow_client(server, path: str) -> RawClient:
    """Handshakes, then never reads; its receive buffer is as small as the kernel allows.

    The 101 head is read byte by byte so that nothing past it is consumed.
    """
    return RawClient(server, path, rcvbuf=4096, head_chunk=1)


END = b"end"


class Reader(threading.Thread):
    """Reads binary messages until the END marker."""

    def __init__(self, client) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.received: list = []
        self.bad: list = []
        self.error: Exception | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while True:
                opcode, data = self.client.recv_data()
                if data == END:
                    break
                if opcode != 2 or len(data) != MESSAGE_SIZE or data != payload(index_of(data)):
                    self.bad.append((opcode, len(data)))
                self.received.append(index_of(data))
        except Exception as exc:  # reported by the test
            self.error = exc
        finally:
            self.done.set()


def start_readers(server, n: int) -> list:
    with ThreadPoolExecutor(16) as pool:
        clients = list(pool.map(lambda _: connect(server, "/feed?role=reader", timeout=10), range(n)))
    readers = [Reader(c) for c in clients]
    for r in readers:
        r.start()
    return readers


def _caught_up(readers: list, count: int) -> bool:
    return min(len(r.received) for r in readers) >= count


def paced_publish(
    send, readers: list, minimum: int, until: Callable[[], bool] = lambda: True, maximum: int = 1000
) -> int:
    """Send at least ``minimum`` messages, then more until ``until()`` holds.

    The publisher never runs more than WINDOW messages ahead of the slowest
    reader.  Returns how many messages were sent.
    """
    i = 0
    while i < minimum or not until():
        if i >= maximum:
            pytest.fail(f"condition not reached after {maximum} messages")
        ok = wait_until(functools.partial(_caught_up, readers, i - WINDOW), timeout=5, interval=0.001)
        if not ok:
            stuck = min(len(r.received) for r in readers)
            errors = [r.error for r in readers if r.error]
            pytest.fail(f"readers stalled: slowest has {stuck} of {i} sent; errors {errors[:3]}")
        send(payload(i))
        i += 1
    return i


def test_never_reading_subscriber_does_not_delay_fifty_readers(start_server):
    state = FeedState()
    server = start_server(feed_app(state), close_timeout=1.0)  # default limit (1 MiB) and policy ("close")
    limit = server.options.max_buffer_size
    assert limit == 1024 * 1024 and server.options.overflow == "close"

    slow = slow_client(server, "/feed?role=slow")
    readers = start_readers(server, 50)
    assert wait_until(lambda: len(server.registry.subscribers("feed")) == 51)
    slow_peer = state.slow_peers()[0]
    publisher = connect(server, "/feed?role=publisher", timeout=10)
    assert wait_until(lambda: len(state.peers.get("publisher", ())) == 1)

    # The kernel's socket buffers swallow a few MiB before the slow peer's own
    # buffer starts to fill, so keep publishing (at least COUNT messages) until
    # the overflow policy has acted on it.
    started = time.monotonic()
    sent = paced_publish(publisher.send_binary, readers, COUNT, until=lambda: slow_peer.closed)
    publisher.send(END)
    for r in readers:
        assert r.done.wait(15), "a reader did not finish"
    elapsed = time.monotonic() - started

    for r in readers:
        assert r.error is None, r.error
        assert r.bad == []
        assert r.received == list(range(sent))
    assert elapsed < 15, f"fan-out of {sent} messages took {elapsed:.1f}s"

    # The slow peer was closed by the overflow policy, for it alone.
    assert wait_until(lambda: any(c[0] == "slow" for c in state.closes), timeout=10)
    slow_closes = [c for c in state.closes if c[0] == "slow"]
    assert len(slow_closes) == 1
    assert slow_closes[0][1] == 1008
    assert not any(c[0] in ("reader", "publisher") for c in state.closes)
    assert state.errors == []

    # Its buffer filled up, yet never went past the limit plus one message.
    assert state.samples, "no samples taken"
    assert max(state.samples) > limit - MESSAGE_SIZE - FRAME_OVERHEAD
    assert max(state.samples) <= limit + MESSAGE_SIZE + FRAME_OVERHEAD
    assert slow_peer.buffered_amount == 0  # released once closed
    assert slow_peer not in server.peers

    # Everyone else is still connected and working.
    assert len(server.registry.subscribers("feed")) == 50
    publisher.send_binary(payload(sent))
    for r in readers:
        _opcode, data = r.client.recv_data()
        assert index_of(data) == sent
        r.client.close()
    publisher.close()
    slow.close()


def test_overflow_drop_keeps_the_slow_peer_and_drops_messages(start_server):
    state = FeedState()
    limit = 256 * 1024
    server = start_server(feed_app(state), overflow="drop", max_buffer_size=limit)

    slow = slow_client(server, "/feed?role=slow")
    readers = start_readers(server, 10)
    assert wait_until(lambda: len(server.registry.subscribers("feed")) == 11)
    slow_peer = state.slow_peers()[0]
    samples: list = []
    full_at: list = []

    def send(data):
        server.publish("feed", data)  # from this (non-hub) thread this time
        samples.append(slow_peer.buffered_amount)

    def buffer_full_for_a_while() -> bool:
        # Once the buffer cannot take another message, everything else is
        # dropped; go on for 20 more messages to be sure some are.
        if not full_at and slow_peer.buffered_amount + MESSAGE_SIZE + FRAME_OVERHEAD > limit:
            full_at.append(len(samples))
        return bool(full_at) and len(samples) >= full_at[0] + 20

    sent = paced_publish(send, readers, COUNT, until=buffer_full_for_a_while)
    assert wait_until(lambda: all(len(r.received) == sent for r in readers), timeout=10)
    for r in readers:
        assert r.error is None, r.error
        assert r.received == list(range(sent))

    # Not closed: the drop policy only discards what does not fit.
    assert state.closes == []
    assert slow_peer in server.peers and not slow_peer.closed
    assert max(samples) <= limit + MESSAGE_SIZE + FRAME_OVERHEAD

    # Now the slow client reads: it gets an in-order stream with holes, then
    # the end marker (accepted once its buffer has drained).
    got: list = []

    def drain():
        while True:
            frame = slow.read_frame()
            if frame is None:
                return
            _opcode, data = frame
            if data == END:
                got.append("end")
                return
            got.append(index_of(data))

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    assert wait_until(lambda: slow_peer.buffered_amount == 0, timeout=10)
    server.publish("feed", END)
    t.join(10)
    assert got and got[-1] == "end"
    indices = got[:-1]
    assert indices == sorted(set(indices)), "out of order or duplicated"
    assert 0 < len(indices) < sent  # some arrived, some were dropped
    assert indices[0] == 0  # the first messages fit in the empty buffer
    assert indices[-1] < sent - 1  # the tail was published while the buffer was full
    for r in readers:
        assert r.done.wait(5)
        assert r.error is None
        r.client.close()
    slow.close()
    assert wait_until(lambda: not server.peers)


def test_two_hundred_peers_chat_and_leave(start_server):
    opened: list = []
    closed: list = []
    received_by_server: list = []

    def open_(peer):
        opened.append(peer.id)
        peer.subscribe("chat")
        peer.subscribe(f"private:{peer.id}")

    def message(peer, msg):
        received_by_server.append(msg.text())
        peer.publish("chat", msg.text())

    app = App()
    app.get(
        "/chat",
        define_websocket_handler(open=open_, message=message, close=lambda peer, d: closed.append((peer.id, d.code))),
    )
    server = start_server(app)
    n = 200
    started = time.monotonic()
    with ThreadPoolExecutor(20) as pool:
        clients = list(pool.map(lambda _: connect(server, "/chat", timeout=10), range(n)))
    assert wait_until(lambda: len(server.registry.subscribers("chat")) == n, timeout=10)
    assert len(server.peers) == n
    assert server.registry.counts() == {"peers": n, "topics": n + 1, "subscribers": n}

    for i, client in enumerate(clients):
        client.send(f"m{i}")
    everyone = {f"m{i}" for i in range(n)}

    def collect(i):
        client = clients[i]
        got = [client.recv() for _ in range(n - 1)]
        return i, got

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(collect, range(n)))
    for i, got in results:
        assert len(got) == n - 1
        assert set(got) == everyone - {f"m{i}"}  # all others, never its own
    assert len(received_by_server) == n

    # Leave: half close properly, half just drop the connection.
    for i, client in enumerate(clients):
        if i % 2:
            client.shutdown()
        else:
            client.close()
    assert wait_until(lambda: not server.peers, timeout=10)
    assert wait_until(lambda: len(closed) == n, timeout=10)
    assert server.registry.counts() == {"peers": 0, "topics": 0, "subscribers": 0}
    codes = {code for _, code in closed}
    assert codes <= {1000, 1006}
    assert sorted(pid for pid, _ in closed) == sorted(opened)
    assert not server.sessions
    assert time.monotonic() - started < 20


def test_slow_peer_does_not_block_direct_sends_to_others(start_server):
    """peer.send to a fast peer is not held up by a full buffer elsewhere."""
    state = FeedState()
    limit = 128 * 1024
    server = start_server(feed_app(state), overflow="drop", max_buffer_size=limit)
    slow = slow_client(server, "/feed?role=slow")
    assert wait_until(lambda: state.slow_peers())
    slow_peer = state.slow_peers()[0]
    # Fill the kernel's buffers, then the slow peer's own buffer.
    for batch in range(100):
        for i in range(20):
            slow_peer.send(payload(batch * 20 + i))
        if wait_until(lambda: slow_peer.buffered_amount > limit // 2, timeout=0.05):
            break
    assert slow_peer.buffered_amount > limit // 2

    fast = connect(server, "/feed?role=other")
    assert wait_until(lambda: state.peers.get("other"))
    fast_peer = state.peers["other"][0]
    for i in range(20):
        fast_peer.send(f"direct {i}")
    assert [fast.recv() for _ in range(20)] == [f"direct {i}" for i in range(20)]
    assert slow_peer.buffered_amount <= limit + MESSAGE_SIZE + FRAME_OVERHEAD
    fast.close()
    slow.close()


def test_the_outbox_transitions_table_is_what_the_outbox_does():
    """Each row of outbox.TRANSITIONS (the docs' state diagram) happens, over a real socket pair (gevent's, as served)."""
    import socket

    import gevent
    import gevent.socket

    from syncws.server.outbox import TRANSITIONS, Outbox, OutboxState

    from ..support.states import Transitions

    transitions = Transitions()
    step = transitions.step
    pairs = [gevent.socket.socketpair() for _ in range(3)]
    try:
        closing = Outbox(pairs[0][0], None)
        step(closing, lambda o: o.put_final(b"\x88\x00"))
        assert closing.put(b"refused") is False  # FINAL takes nothing more
        assert closing.wait_flushed(5) and pairs[0][1].recv(16) == b"\x88\x00"
        step(closing, lambda o: o.stop())
        stopped = Outbox(pairs[1][0], None)
        step(stopped, lambda o: o.stop())
        broken = Outbox(pairs[2][0], None)
        pairs[2][1].close()
        pairs[2][0].shutdown(socket.SHUT_WR)  # writes fail now: EPIPE
        broken.put(b"x")
        assert broken.wait_flushed(5) and broken.state is OutboxState.FAILED
        gevent.sleep(0)
    finally:
        for a, b in pairs:
            a.close()
            b.close()
    assert transitions.seen == Transitions.of(TRANSITIONS)


def test_the_last_frame_is_written_at_once_and_a_rest_the_socket_cannot_take_by_the_writer():
    """put_final writes what the socket takes now; only a rest starts the writer greenlet."""
    import socket

    import gevent
    import gevent.socket

    from syncws.server.outbox import Outbox, OutboxState

    small, small_peer = gevent.socket.socketpair()
    large, large_peer = gevent.socket.socketpair()
    broken, broken_peer = gevent.socket.socketpair()
    try:
        closing = Outbox(small, None)
        closing.put_final(b"\x88\x02\x03\xe8")
        assert closing._writer is None  # no greenlet for a frame the socket took at once
        assert closing.wait_flushed(0) and small_peer.recv(16) == b"\x88\x02\x03\xe8"

        large.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        body = bytes(range(256)) * 8192  # 2 MiB: more than the socket takes now
        filling = Outbox(large, None)
        filling._queue = collections.deque([body])  # queued, not yet flushed (as between two hub turns)
        filling._queued = len(body)
        filling.put_final(b"\x88\x00")
        assert filling._writer is not None and not filling.wait_flushed(0)
        received = bytearray()
        reader = gevent.spawn(lambda: [received.extend(c) for c in iter(lambda: large_peer.recv(65536), b"")])
        assert filling.wait_flushed(10) and filling.state is OutboxState.FINAL
        large.shutdown(socket.SHUT_WR)
        reader.join(10)
        assert bytes(received) == body + b"\x88\x00"  # all of it, in order, the close frame last

        broken_peer.close()
        broken.shutdown(socket.SHUT_WR)  # writes fail now: EPIPE
        failing = Outbox(broken, None)
        failing.put_final(b"\x88\x00")
        assert failing.state is OutboxState.FAILED and failing.wait_flushed(0) and failing._writer is None
    finally:
        for sock in (small, small_peer, large, large_peer, broken, broken_peer):
            sock.close()
