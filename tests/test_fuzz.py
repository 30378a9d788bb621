"""Property-based fuzzing of a live server (Hypothesis).

Random bytes, mutated frame sequences and mutated upgrade requests are thrown
at one server while a well-behaved client (:class:`Watchdog`) chats with it
in parallel.  Properties:

* every connection ends in bounded time; whatever the server sends back is
  well-formed (unmasked frames, or an HTTP status line);
* a frame sequence gets exactly what RFC 6455 prescribes: the echoes and
  pongs of the valid prefix, then a close frame with the right code (1002
  protocol error, 1007 invalid UTF-8, 1009 too big, or the client's own code
  echoed when the sequence is valid and ends with a close);
* a mutated handshake is answered 101 or 4xx, never 5xx;
* nothing is logged at ERROR and no greenlet dies of an exception;
* the watchdog never misses an echo and never waits long for one.

Runs are deterministic (``derandomize=True``, no example database) and
bounded (a few hundred examples, a few seconds in all).
"""

from __future__ import annotations

import codecs
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass

import pytest
import websocket
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from syncws import serve
from syncws.protocol import is_valid_close_code
from syncws.server.server import Server

from .conftest import ws_url
from .support import app_with, new_key, split_frame, upgrade_request

pytestmark = pytest.mark.slow  # subprocesses, browsers, Redis or load: not in the fast loop

LIMIT = 4096  # the server's max_message_size: big enough to echo, small enough to exceed cheaply
READ_TIMEOUT = 5.0

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# -- the live server and the well-behaved client ---------------------------------------


class Watchdog:
    """A websocket-client peer echoing numbered messages in a thread, timing each round trip."""

    def __init__(self, server) -> None:
        self.client = websocket.create_connection(ws_url(server), timeout=READ_TIMEOUT)
        self.count = 0
        self.worst = 0.0
        self.errors: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        try:
            while not self._stop.is_set():
                text = f"watchdog {n}"
                started = time.monotonic()
                self.client.send(text)
                reply = self.client.recv()
                self.worst = max(self.worst, time.monotonic() - started)
                if reply != text:
                    self.errors.append((text, reply))
                    return
                n += 1
                self.count = n
                time.sleep(0.005)
        except Exception as exc:
            self.errors.append(repr(exc))

    def check(self, since: int) -> None:
        """Alive, error-free, and it made progress after ``since`` echoes."""
        deadline = time.monotonic() + READ_TIMEOUT
        while self.count <= since and not self.errors and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not self.errors, self.errors
        assert self.count > since, "the well-behaved client stopped getting echoes"
        assert self.worst < 2.0, f"the well-behaved client waited {self.worst:.2f} s for an echo"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(READ_TIMEOUT)
        self.client.close()


class Trouble(logging.Handler):
    """Collects ERROR records of the syncws loggers."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Live:
    server: Server
    watchdog: Watchdog
    trouble: Trouble
    hub_errors: list
    errors_seen: list  # what the error hook received

    @property
    def port(self) -> int:
        return self.server.port

    def __repr__(self) -> str:  # keeps Hypothesis' falsifying-example report short
        return f"<live server on port {self.port}>"

    def assert_healthy(self, since: int) -> None:
        """The watchdog progressed, no greenlet died, nothing was logged at ERROR.

        Except gevent's own one line for a request whose *body* was malformed
        (a ``Transfer-Encoding: chunked`` upgrade cut short): pywsgi logs that
        on purpose, so that operators can spot bad clients.  It must be one
        line, without a traceback.
        """
        self.watchdog.check(since)
        assert not self.hub_errors, self.hub_errors[:3]
        records, self.trouble.records = self.trouble.records, []
        client_input = [r for r in records if r.name == "syncws.error" and "Invalid request" in r.getMessage()]
        assert len(client_input) <= 1, [r.getMessage() for r in client_input]
        assert all(r.exc_info is None for r in client_input)
        others = [r for r in records if r not in client_input]
        assert not others, [r.getMessage() for r in others[:3]]


@pytest.fixture(scope="module")
def live():
    errors_seen: list = []
    app = app_with(
        message=lambda peer, msg: peer.send(msg.raw_data),
        error=lambda peer, exc: errors_seen.append(type(exc).__name__),
    )
    server = serve(app, host="127.0.0.1", port=0, background=True, access_log=False, max_message_size=LIMIT)
    trouble = Trouble()
    logger = logging.getLogger("syncws")
    logger.addHandler(trouble)
    hub = server.runtime.bridge.hub
    hub_errors: list = []
    original = hub.handle_error

    def handle_error(context, type_, value, tb):  # gevent's documented per-hub override
        hub_errors.append((context, type_, value))
        original(context, type_, value, tb)

    hub.handle_error = handle_error
    watchdog = Watchdog(server)
    try:
        yield Live(server, watchdog, trouble, hub_errors, errors_seen)
    finally:
        watchdog.stop()
        logger.removeHandler(trouble)
        server.stop(timeout=2)


# -- raw I/O ---------------------------------------------------------------------------------


def handshake(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
    sock.sendall(upgrade_request(key=new_key()))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: nothing past the head is consumed
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


def send_all_then_half_close(sock: socket.socket, data: bytes) -> None:
    """Send (the server may hang up midway once it has seen a violation), then SHUT_WR."""
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def read_until_eof(sock: socket.socket) -> bytes:
    """Everything until the server closes; a reset counts as the end.  Fails after READ_TIMEOUT."""
    sock.settimeout(READ_TIMEOUT)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError as exc:
        raise AssertionError(
            f"the server neither answered nor closed within {READ_TIMEOUT} s; got {data[:200]!r}"
        ) from exc
    return data


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Parse the server's byte stream: whole, unmasked frames; keepalive pings dropped; nothing after a close."""
    frames: list[tuple[int, bytes]] = []
    while data:
        frame = split_frame(data)  # asserts the frame is unmasked
        assert frame is not None, f"truncated server frame: {data[:100]!r}"
        opcode, payload, size = frame
        assert not frames or frames[-1][0] != OP_CLOSE, "data after the server's close frame"
        if opcode != OP_PING:
            frames.append((opcode, payload))
        data = data[size:]
    return frames


def close_code(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


# -- 1. random bytes after the handshake ---------------------------------------------------------

ANY_CLOSE = {1000, 1002, 1007, 1009}


@FUZZ
@given(garbage=st.binary(min_size=1, max_size=2048))
def test_random_bytes_after_the_handshake(live, garbage):
    since = live.watchdog.count
    with handshake(live.port) as sock:
        send_all_then_half_close(sock, garbage)
        frames = server_frames(read_until_eof(sock))
    if frames and frames[-1][0] == OP_CLOSE:
        code = close_code(frames[-1][1])
        assert code is None or code in ANY_CLOSE, code
        event(f"close {code}")
    else:
        event("closed without a close frame (incomplete frame, then EOF)")
    live.assert_healthy(since)


# -- 2. mutated frame sequences, checked against an RFC 6455 model --------------------------------


@dataclass(frozen=True)
class WireFrame:
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    payload: bytes

    def encode(self, mask: bytes) -> bytes:
        head = bytes([(0x80 if self.fin else 0) | (self.rsv << 4) | self.opcode])
        n = len(self.payload)
        bit = 0x80 if self.masked else 0
        if n < 126:
            head += bytes([bit | n])
        elif n < 65536:
            head += bytes([bit | 126]) + struct.pack("!H", n)
        else:
            head += bytes([bit | 127]) + struct.pack("!Q", n)
        if not self.masked:
            return head + self.payload
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(self.payload))
        return head + mask + body


BAD_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"abc\x80", b"\xe2\x82"]

good_text = st.text(max_size=80).map(lambda s: s.encode("utf-8"))
bad_text = st.tuples(st.text(max_size=20), st.sampled_from(BAD_UTF8), st.text(max_size=20)).map(
    lambda t: t[0].encode() + t[1] + t[2].encode()
)
binary_payloads = st.one_of(
    st.binary(max_size=200),
    st.integers(LIMIT - 8, LIMIT + 300).map(lambda n: b"\x00" * n),  # around the size limit
)
control_payloads = st.binary(max_size=125)
close_payloads = st.one_of(
    st.just(b""),
    st.tuples(st.sampled_from([1000, 1001, 1003, 1011, 3000, 4999]), st.text(max_size=30)).map(
        lambda t: struct.pack("!H", t[0]) + t[1].encode()
    ),
    st.binary(min_size=1, max_size=1),
    st.tuples(st.integers(0, 65535), st.text(max_size=30)).map(lambda t: struct.pack("!H", t[0]) + t[1].encode()),
    st.tuples(st.sampled_from([1000, 3000]), st.sampled_from(BAD_UTF8)).map(lambda t: struct.pack("!H", t[0]) + t[1]),
)
MUTATIONS = ["rsv", "opcode", "unmask", "control-fin", "control-long", "bad-utf8", "drop", "duplicate", "flip-fin"]


@st.composite
def frame_sequences(draw) -> list[WireFrame]:
    """A valid conversation (fragmented messages, pings between fragments, maybe a close), then at most one mutation."""
    frames: list[WireFrame] = []
    for _ in range(draw(st.integers(1, 4))):
        item = draw(st.sampled_from(["text", "text", "binary", "binary", "ping", "pong"]))
        if item in ("ping", "pong"):
            frames.append(WireFrame(True, 0, OP_PING if item == "ping" else OP_PONG, True, draw(control_payloads)))
            continue
        payload = draw(good_text if item == "text" else binary_payloads)
        # Cut anywhere, even inside a UTF-8 character: only the whole message must be valid.
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
        parts = [payload[i:j] for i, j in zip([0, *cuts], [*cuts, len(payload)], strict=False)]
        for k, part in enumerate(parts):
            opcode = (OP_TEXT if item == "text" else OP_BINARY) if k == 0 else OP_CONT
            frames.append(WireFrame(k == len(parts) - 1, 0, opcode, True, part))
            if k < len(parts) - 1 and draw(st.integers(0, 3)) == 0:
                frames.append(WireFrame(True, 0, OP_PING, True, draw(control_payloads)))
    if draw(st.integers(0, 3)) == 0:
        frames.append(WireFrame(True, 0, OP_CLOSE, True, draw(close_payloads)))
    mutation = draw(st.sampled_from([None, None, *MUTATIONS]))
    if mutation is None:
        return frames
    i = draw(st.integers(0, len(frames) - 1))
    f = frames[i]
    if mutation == "rsv":
        f = WireFrame(f.fin, draw(st.integers(1, 7)), f.opcode, f.masked, f.payload)
    elif mutation == "opcode":
        f = WireFrame(f.fin, 0, draw(st.sampled_from([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])), f.masked, f.payload)
    elif mutation == "unmask":
        f = WireFrame(f.fin, 0, f.opcode, False, f.payload)
    elif mutation == "control-fin":
        f = WireFrame(False, 0, draw(st.sampled_from([OP_PING, OP_PONG, OP_CLOSE])), True, f.payload[:125])
    elif mutation == "control-long":
        f = WireFrame(
            True, 0, draw(st.sampled_from([OP_PING, OP_PONG, OP_CLOSE])), True, b"L" * draw(st.integers(126, 300))
        )
    elif mutation == "bad-utf8":
        f = WireFrame(f.fin, 0, f.opcode, True, f.payload + draw(st.sampled_from(BAD_UTF8)))
    elif mutation == "flip-fin":
        f = WireFrame(not f.fin, 0, f.opcode, True, f.payload)
    if mutation == "drop":
        del frames[i]
    elif mutation == "duplicate":
        frames.insert(i, f)
    else:
        frames[i] = f
    return frames


def expected(frames: list[WireFrame]) -> tuple[list[tuple[int, bytes]], set, bool]:
    """What the server must send back: (echoes and pongs, acceptable close codes, client closed?).

    The model of RFC 6455 for a server with ``max_message_size=LIMIT`` that
    echoes every message, validating text as fragments arrive.
    """
    replies: list = []
    message_opcode = None
    parts: list = []
    size = 0
    decoder = None
    for f in frames:
        control = f.opcode >= 0x8
        if f.rsv or f.opcode not in (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
            return replies, {1002}, False
        if control and (not f.fin or len(f.payload) > 125):
            return replies, {1002}, False
        if not f.masked:
            return replies, {1002}, False
        if not control and size + len(f.payload) > LIMIT:
            out_of_order = (f.opcode == OP_CONT) == (message_opcode is None)
            return replies, {1009, 1002} if out_of_order else {1009}, False
        if f.opcode == OP_CLOSE:
            if len(f.payload) == 1:
                return replies, {1002}, False
            if not f.payload:
                return replies, {None}, True
            code = close_code(f.payload)
            if code is None or not is_valid_close_code(code):
                return replies, {1002}, False
            try:
                f.payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                return replies, {1007}, False
            return replies, {close_code(f.payload)}, True
        if f.opcode == OP_PING:
            replies.append((OP_PONG, f.payload))
            continue
        if f.opcode == OP_PONG:
            continue
        if f.opcode == OP_CONT and message_opcode is None:
            return replies, {1002}, False
        if f.opcode != OP_CONT and message_opcode is not None:
            return replies, {1002}, False
        if f.opcode != OP_CONT:
            message_opcode = f.opcode
            decoder = codecs.getincrementaldecoder("utf-8")() if f.opcode == OP_TEXT else None
        if decoder is not None:
            try:
                decoder.decode(f.payload, final=f.fin)
            except UnicodeDecodeError:
                return replies, {1007}, False
        parts.append(f.payload)
        size += len(f.payload)
        if f.fin:
            replies.append((message_opcode, b"".join(parts)))
            message_opcode, parts, size, decoder = None, [], 0, None
    # A valid sequence: our trailing close (1000) is answered in kind.
    return replies, {1000}, True


@FUZZ
@given(frames=frame_sequences())
def test_frame_sequences_get_what_rfc6455_prescribes(live, frames):
    since = live.watchdog.count
    mask = os.urandom(4)
    data = b"".join(f.encode(mask) for f in frames)
    data += WireFrame(True, 0, OP_CLOSE, True, struct.pack("!H", 1000)).encode(mask)
    want_replies, want_codes, clean = expected(frames)
    with handshake(live.port) as sock:
        send_all_then_half_close(sock, data)
        got = server_frames(read_until_eof(sock))
    assert got, "the server closed without a close frame"
    assert got[-1][0] == OP_CLOSE, got[-1]
    assert got[:-1] == want_replies
    code = close_code(got[-1][1])
    assert code in want_codes, (code, want_codes)
    event(f"close {code} after {len(want_replies)} replies")
    if clean and code is not None:
        assert got[-1][1] == struct.pack("!H", code), "a client-started close is echoed with its code only"
    live.assert_healthy(since)


# -- 3. mutated handshakes -----------------------------------------------------------------------


def _lines(request: bytes) -> list[bytes]:
    return request[:-4].split(b"\r\n")


def _join(lines: list[bytes]) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n"


@st.composite
def mutations(draw):
    """A list of edits to a valid upgrade request."""
    edit = st.one_of(
        st.tuples(st.just("drop-line"), st.integers(0, 20)),
        st.tuples(st.just("dup-line"), st.integers(0, 20)),
        st.tuples(st.just("swap-case"), st.integers(0, 20)),
        st.tuples(st.just("set-byte"), st.integers(0, 400), st.integers(0, 255)),
        st.tuples(st.just("insert"), st.integers(0, 400), st.binary(min_size=1, max_size=20)),
        st.tuples(st.just("delete"), st.integers(0, 400), st.integers(1, 20)),
        st.tuples(st.just("truncate"), st.integers(0, 400)),
        st.tuples(
            st.just("header"),
            st.sampled_from(
                [
                    b"Sec-WebSocket-Version: 8",
                    b"Sec-WebSocket-Version: 13, 8",
                    b"Sec-WebSocket-Key: short",
                    b"Sec-WebSocket-Key: " + b"A" * 200,
                    b"Connection: close",
                    b"Upgrade: h2c",
                    b"Content-Length: 5",
                    b"Transfer-Encoding: chunked",
                    b"Content-Length: -1",
                    b"Sec-WebSocket-Protocol: ,,,",
                    b"Origin: http://evil.example",
                    b"Host:",
                    b"X-Long: " + b"x" * 9000,
                    b"X-Bin: \x00\xff\x7f",
                    b" folded-continuation",
                    b"NoColonHere",
                    b": no-name",
                ]
            ),
        ),
        st.tuples(
            st.just("request-line"),
            st.sampled_from(
                [
                    b"POST /_ws HTTP/1.1",
                    b"GET /_ws HTTP/1.0",
                    b"GET /_ws HTTP/2.0",
                    b"GET /_ws",
                    b"GET  /_ws  HTTP/1.1",
                    b"GET /nowhere HTTP/1.1",
                    b"GET /_ws?x=%zz HTTP/1.1",
                    b"GET http://h/_ws HTTP/1.1",
                    b"get /_ws HTTP/1.1",
                    b"GET /_ws HTTP/1.1 extra",
                    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                    b"GET /" + b"a" * 9000 + b" HTTP/1.1",
                    b"CONNECT 127.0.0.1:1 HTTP/1.1",
                ]
            ),
        ),
    )
    return draw(st.lists(edit, min_size=1, max_size=4))


def apply(request: bytes, edits) -> bytes:
    for edit in edits:
        kind = edit[0]
        if kind in ("drop-line", "dup-line", "swap-case"):
            lines = _lines(request)
            if not lines:
                continue
            i = edit[1] % len(lines)
            if kind == "drop-line":
                del lines[i]
            elif kind == "dup-line":
                lines.insert(i, lines[i])
            else:
                lines[i] = lines[i].swapcase()
            request = _join(lines)
        elif kind == "set-byte" and request:
            i = edit[1] % len(request)
            request = request[:i] + bytes([edit[2]]) + request[i + 1 :]
        elif kind == "insert":
            i = edit[1] % (len(request) + 1)
            request = request[:i] + edit[2] + request[i:]
        elif kind == "delete" and request:
            i = edit[1] % len(request)
            request = request[:i] + request[i + edit[2] :]
        elif kind == "truncate":
            request = request[: edit[1] % (len(request) + 1)]
        elif kind == "header":
            lines = _lines(request)
            request = _join([*lines, edit[1]])
        elif kind == "request-line":
            lines = _lines(request)
            request = _join([edit[1], *lines[1:]])
    return request


@FUZZ
@given(edits=mutations())
def test_mutated_handshakes_get_101_or_4xx(live, edits):
    since = live.watchdog.count
    request = apply(upgrade_request(key=new_key()), edits)
    with socket.create_connection(("127.0.0.1", live.port), timeout=READ_TIMEOUT) as sock:
        send_all_then_half_close(sock, request)
        answer = read_until_eof(sock)
    if answer:
        assert answer.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), answer[:100]
        status = int(answer.split(b" ", 2)[1])
        event(f"status {status}")
        assert status == 101 or 400 <= status < 500, (status, request[:200], answer[:300])
        if status == 101:
            assert b"\r\nsec-websocket-accept: " in answer.lower()
    else:  # the head never completed (cut, or garbage without a line end): closing quietly is right
        event("no answer")
    live.assert_healthy(since)


def test_the_server_is_still_fine_after_the_fuzzing(live):
    """Runs last in this module: a fresh client, and the watchdog kept going throughout."""
    client = websocket.create_connection(ws_url(live.server), timeout=READ_TIMEOUT)
    client.send("after the storm")
    assert client.recv() == "after the storm"
    client.close()
    live.assert_healthy(live.watchdog.count - 1)
    assert live.watchdog.count > 100
    assert {"ProtocolError"} >= set(live.errors_seen)
