"""Helpers shared by the test modules: raw WebSocket and HTTP over bare sockets,
and the subprocesses some tests run (``python -m syncws``, a private redis-server).

Fixtures stay in ``conftest.py``; what is here is plain functions and classes.
"""

from __future__ import annotations

import base64
import os
import queue
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import redis
import websocket

from syncws import App, define_websocket_handler
from syncws.protocol import encode_frame

from .conftest import raw_request, wait_until

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample Sec-WebSocket-Key
MASK = b"\x37\xfa\x21\x3d"  # RFC 6455's sample masking key (section 5.7)


def new_key() -> str:
    """A fresh random Sec-WebSocket-Key."""
    return base64.b64encode(os.urandom(16)).decode()


def app_with(path: str = "/_ws", handler=None, **hooks) -> App:
    """An App with one WebSocket handler on ``path``: ``handler`` if given, else one built from ``hooks``."""
    app = App()
    app.get(path, handler if handler is not None else define_websocket_handler(**hooks))
    return app


# -- HTTP ----------------------------------------------------------------------


def upgrade_request(
    path: str = "/_ws",
    *,
    key: str | None = KEY,
    host: str = "127.0.0.1",
    method: str = "GET",
    version: str | None = "13",
    proto: str = "HTTP/1.1",
    extra: str = "",
) -> bytes:
    """A WebSocket upgrade request; a None key or version leaves that header out; ``extra``: CRLF-ended lines."""
    lines = [f"{method} {path} {proto}", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade"]
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if method != "GET":
        lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode("latin-1")


def read_head(sock: socket.socket, chunk_size: int = 4096) -> tuple[bytes, bytes]:
    """Read until the blank line that ends an HTTP head; return (head, the bytes read past it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(chunk_size)
        assert chunk, f"connection closed before the end of the HTTP head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def status_of(data: bytes) -> int:
    """The status code on the first line of an HTTP response."""
    return int(data.split(b"\r\n", 1)[0].split()[1])


def parse_response(data: bytes) -> tuple[int, dict, bytes]:
    """Split an HTTP response into (status, lower-cased headers, body), decoding a chunked body."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete HTTP head in {data!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        decoded = b""
        rest = body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            decoded += rest[:size]
            rest = rest[size + 2 :]
        body = decoded
    return status, headers, body


def answered_without_upgrade(server, path: str, status: int) -> bytes:
    """Upgrade-request ``path``; assert a plain ``status`` answer, no Sec-WebSocket-Accept; return the response."""
    data = raw_request(server, upgrade_request(path))
    assert status_of(data) == status
    assert b"Sec-WebSocket-Accept" not in data
    return data


def http_exchange(server, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw request bytes; return the response head and its Content-Length body (a 101 head as read).

    Without a Content-Length it reads until the server closes or idles.
    """
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        head, body = read_head(sock, 65536)
        if head.startswith(b"HTTP/1.1 101"):
            return head + b"\r\n\r\n" + body
        match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
        if match is None:
            sock.settimeout(0.5)
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    body += chunk
            except socket.timeout:
                pass
            return head + b"\r\n\r\n" + body
        length = int(match.group(1))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body


# -- WebSocket frames ------------------------------------------------------------


def split_frame(data: bytes) -> tuple[int, bytes, int] | None:
    """Parse the unmasked (server) frame that starts ``data``: (opcode, payload, frame size), None if incomplete."""
    if len(data) < 2:
        return None
    assert not data[1] & 0x80, "server frames are never masked"
    n, pos = data[1] & 0x7F, 2
    if n == 126:
        if len(data) < 4:
            return None
        n, pos = struct.unpack("!H", data[2:4])[0], 4
    elif n == 127:
        if len(data) < 10:
            return None
        n, pos = struct.unpack("!Q", data[2:10])[0], 10
    if len(data) < pos + n:
        return None
    return data[0] & 0x0F, data[pos : pos + n], pos + n


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Every (opcode, payload) in ``data``, which must hold whole unmasked frames only."""
    frames = []
    while data:
        frame = split_frame(data)
        assert frame is not None, f"truncated frame in {data!r}"
        opcode, payload, size = frame
        frames.append((opcode, payload))
        data = data[size:]
    return frames


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bytes = MASK) -> bytes:
    """A frame as a client sends it: always masked."""
    return encode_frame(opcode, payload, fin=fin, mask=mask)


OPEN_RAW_CLIENTS: list = []


class RawClient:
    """A WebSocket client on a bare socket: handshakes (asserting 101), sends masked frames, reads raw ones."""

    def __init__(
        self,
        server,
        path: str = "/_ws",
        *,
        host: str = "127.0.0.1",
        rcvbuf: int | None = None,
        head_chunk: int = 4096,
        timeout: float = 5.0,
    ) -> None:
        """``rcvbuf`` shrinks the receive buffer; ``head_chunk=1`` reads nothing past the 101 head."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        OPEN_RAW_CLIENTS.append(self)  # conftest closes whatever a test left open
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", server.port))
        self.sock.sendall(upgrade_request(path, key=new_key(), host=host))
        self.head, self.buf = read_head(self.sock, head_chunk)
        assert self.head.startswith(b"HTTP/1.1 101 "), self.head

    def send_frame(self, opcode: int, payload: bytes = b"", fin: bool = True, mask: bytes | None = None) -> None:
        """Send one frame, masked as a client must (a random mask unless one is given)."""
        self.sock.sendall(client_frame(opcode, payload, fin=fin, mask=mask or os.urandom(4)))

    def _recv_more(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def read_exactly(self, n: int) -> bytes:
        """The next ``n`` raw bytes of the stream."""
        while len(self.buf) < n:
            assert self._recv_more(), f"connection closed after {self.buf!r}"
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_frame(self) -> tuple[int, bytes] | None:
        """The next (opcode, payload), or None on EOF."""
        while True:
            frame = split_frame(self.buf)
            if frame is not None:
                opcode, payload, size = frame
                self.buf = self.buf[size:]
                return opcode, payload
            if not self._recv_more():
                return None

    def read_all_frames(self) -> list[tuple[int, bytes]]:
        """Every frame until the server closes the connection."""
        frames = []
        while (frame := self.read_frame()) is not None:
            frames.append(frame)
        return frames

    def read_to_eof(self) -> bytes:
        """Every raw byte left until EOF (a connection reset counts as EOF)."""
        try:
            while self._recv_more():
                pass
        except ConnectionResetError:
            pass
        data, self.buf = self.buf, b""
        return data

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- websocket-client connections ----------------------------------------------


def recv_close(client: websocket.WebSocket) -> tuple[int | None, str]:
    """Read until the server's close frame; return its (code, reason), code None for an empty one."""
    while True:
        opcode, data = client.recv_data(True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            return code, data[2:].decode("utf-8")


def assert_nothing_received(client: websocket.WebSocket, wait: float = 0.3) -> None:
    """Assert that no message arrives within ``wait`` seconds; the client's timeout is restored."""
    timeout = client.gettimeout()
    client.settimeout(wait)
    with pytest.raises(websocket.WebSocketTimeoutException):
        client.recv()
    client.settimeout(timeout)


# -- processes -------------------------------------------------------------------------------


SYNCWS_BOUND = 15.0  # how long a ``python -m syncws`` may take to start, or to exit when asked to


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the moment of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(env: dict | None = None) -> dict:
    """This process's environment without any SYNCWS_* variable, with unbuffered Python output, plus ``env``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SYNCWS_")}
    environ["PYTHONUNBUFFERED"] = "1"
    environ.update(env or {})
    return environ


class ServerProcess:
    """A running server command in ``cwd``; threads drain its stdout and stderr.

    ``self.lines`` gets the lines of the streams named in ``line_streams`` as
    they come.  Its SYNCWS_* variables come only from ``env`` (see
    :func:`subprocess_env`).
    """

    line_streams: tuple = ("stdout",)

    def __init__(self, command: list, *, cwd, env: dict | None = None) -> None:
        self.command = list(command)
        self.proc = subprocess.Popen(
            self.command,
            cwd=str(cwd),
            env=subprocess_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: "queue.Queue[str]" = queue.Queue()  # selected streams, line by line, as they come
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._drain, args=(stream, into, self.lines if name in self.line_streams else None),
                             daemon=True)
            for name, stream, into in (("stdout", self.proc.stdout, self.stdout), ("stderr", self.proc.stderr, self.stderr))
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _drain(stream, into: list, lines) -> None:
        try:
            for line in stream:
                into.append(line)
                if lines is not None:
                    lines.put(line)
        finally:
            stream.close()  # at EOF: the pipe is ours to close (leaks fail the tests)

    def next_match(self, pattern: str, deadline: float):
        """The next line of :attr:`lines` matching ``pattern`` before ``deadline``; None if it ends or time runs out."""
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    return None
                continue
            match = re.search(pattern, line)
            if match:
                return match
        return None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def out(self) -> str:
        return "".join(self.stdout)

    @property
    def err(self) -> str:
        return "".join(self.stderr)

    def wait(self, timeout: float = SYNCWS_BOUND) -> int:
        """Its exit status; if it has not exited within ``timeout``, kill it and fail.

        Output may still be arriving (from processes that inherited its pipes): see :meth:`finish`.
        """
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self!r} did not exit within {timeout} s; stderr={self.err!r}")

    def finish(self, timeout: float = SYNCWS_BOUND) -> int:
        """:meth:`wait`, then the output is complete: the draining threads are joined."""
        rc = self.wait(timeout)
        self.join_output()
        return rc

    def join_output(self) -> None:
        for t in self._threads:
            t.join(5)

    def terminate(self, timeout: float = 10.0) -> None:
        """Teardown that lets it shut down: SIGTERM, then SIGKILL if it is still running after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """Teardown: SIGKILL, whatever state it is in."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


class SyncwsProcess(ServerProcess):
    """A running ``python -m syncws ARGS`` in ``cwd``."""

    def __init__(self, *args: str, cwd, env: dict | None = None) -> None:
        self.args = list(args)
        super().__init__([sys.executable, "-m", "syncws", *args], cwd=cwd, env=env)

    def __repr__(self) -> str:
        return f"<python -m syncws {' '.join(self.args)} (pid {self.pid})>"

    def wait_for_banner(self, timeout: float = SYNCWS_BOUND) -> tuple[str, str]:
        """(url, the whole banner line) once it says it is serving; if it does not, kill it and fail."""
        match = self.next_match(r"serving .* on (http://\S+)", time.monotonic() + timeout)
        if match:
            return match.group(1), match.string
        self.kill()
        pytest.fail(f"{self!r} did not start; stdout={self.out!r} stderr={self.err!r}")

    def wait_for_url(self, timeout: float = SYNCWS_BOUND) -> str:
        """The URL it serves on, once it says so (see :meth:`wait_for_banner`)."""
        return self.wait_for_banner(timeout)[0]


class SyncwsRunner:
    """Starts ``python -m syncws`` processes in ``cwd``, each of ``process_class``; kills them all on exit.

    ``runner(*args, files={name: source}, env={...})`` writes the (dedented)
    files into ``cwd`` first.
    """

    def __init__(self, cwd: Path, process_class: type[SyncwsProcess] = SyncwsProcess) -> None:
        self.cwd = cwd
        self.process_class = process_class
        self.started: list[SyncwsProcess] = []

    def __call__(self, *args: str, files: dict | None = None, env: dict | None = None) -> SyncwsProcess:
        for name, source in (files or {}).items():
            (self.cwd / name).write_text(textwrap.dedent(source))
        process = self.process_class(*args, cwd=self.cwd, env=env)
        self.started.append(process)
        return process

    def __enter__(self) -> "SyncwsRunner":
        return self

    def __exit__(self, *exc) -> None:
        for process in self.started:
            process.kill()


class RedisServer:
    """A private redis-server on 127.0.0.1 that keeps nothing on disk.

    ``with RedisServer() as server:`` starts it on a free port, waits until it
    answers PING, and stops it.  ``kill()`` is kill -9; ``start()`` brings it
    back on the same port.  A missing redis-server fails the test, it never
    skips it (``bash scripts/test`` installs it).
    """

    def __init__(self, workdir: Path | None = None, port: int | None = None) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server is not installed: these tests need it (bash scripts/test installs it)")
        self.executable = executable
        self.port = port or free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **options) -> redis.Redis:
        """A client of this server; replies are decoded to str unless ``options`` say otherwise."""
        options = {"socket_timeout": 5, "decode_responses": True, **options}
        return redis.Redis(host="127.0.0.1", port=self.port, **options)

    def start(self) -> "RedisServer":
        """Start it (again, on the same port) and wait until it answers PING; fail if it does not."""
        args = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.workdir is not None:
            args += ["--dir", str(self.workdir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client(socket_timeout=1, socket_connect_timeout=1)

        def answers() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"redis-server exited with {self.proc.returncode} (port {self.port} taken?)")
            try:
                return client.ping()
            except redis.RedisError:
                return False

        try:
            if not wait_until(answers, timeout=10):
                self.stop()
                pytest.fail(f"redis-server did not answer PING on port {self.port}")
        finally:
            client.close()
        return self

    def kill(self) -> None:
        """kill -9: no goodbye to any client."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class BlockingReader:
    """Drives a sans-I/O :class:`syncws.protocol.FrameParser` from a blocking ``read(n)``.

    ``read_some(n)``, when given, is used instead (1 to n bytes per call), as
    the server's socket reads are.  EOF in the middle of a frame, or before
    any frame, raises ``ConnectionClosed`` (a test-side exception).
    """

    def __init__(self, read, max_message_size, read_some=None, chunk: int = 65536) -> None:
        from syncws.protocol import FrameParser

        self.parser = FrameParser(max_message_size)
        self._read = read_some or read
        self._chunk = chunk

    def read_message(self):
        while True:
            frame = self.parser.next_frame()
            if frame is not None:
                return frame
            if not self.parser.needs_data:
                continue
            data = self._read(self._chunk)
            if not data:
                raise ConnectionClosed("input ended" + (" in a frame" if self.parser.in_frame else ""))
            self.parser.feed(data)


class ConnectionClosed(Exception):
    """The input of a :class:`BlockingReader` ended."""


def read_messages(reader) -> list:
    """Every message a BlockingReader returns before its input ends."""
    messages = []
    while True:
        try:
            messages.append(reader.read_message())
        except ConnectionClosed:
            return messages
