"""Resources: running out of file descriptors, and nothing left behind by dropped peers.

* EMFILE: a ``python -m syncws`` subprocess with ``RLIMIT_NOFILE`` lowered to
  64 is filled with connections until ``accept`` fails.  It must stay alive,
  keep serving the peers it has, log the condition once (no traceback per
  retry, no busy loop), and serve new clients again as soon as descriptors
  are freed.
* 2,000 connect/disconnect cycles with abrupt drops (RST, FIN without a close
  frame, mid-frame): afterwards the registry, the session set and the hub's
  greenlets are empty and memory is back near where it started.
"""

from __future__ import annotations

import gc
import os
import queue
import resource
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
import websocket

from syncws.protocol import OP_BINARY, OP_TEXT, encode_frame

from ..conftest import wait_until
from ..support import RawClient, app_with, new_key, read_head, upgrade_request
from ..support.memory import live_greenlets, survivors

pytestmark = pytest.mark.slow  # subprocesses, browsers, Redis or load: not in the fast loop

# -- EMFILE -----------------------------------------------------------------------------

FD_LIMIT = 64
STARTUP_TIMEOUT = 15.0

EMFILE_APP = """
from syncws import App, define_websocket_handler


app = App()
app.get("/", lambda request: "ok")
app.get("/_ws", define_websocket_handler(message=lambda peer, msg: peer.send("echo:" + msg.text())))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class LimitedServer:
    """``python -m syncws`` in a subprocess with ``RLIMIT_NOFILE`` = ``FD_LIMIT``."""

    def __init__(self, tmp_path) -> None:
        (tmp_path / "emfile_app.py").write_text(EMFILE_APP)
        self.port = free_port()

        def lower_fd_limit() -> None:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, hard))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncws", "emfile_app:app", "--port", str(self.port)],
            cwd=tmp_path,
            preexec_fn=lower_fd_limit,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.stderr: list[str] = []
        self.stdout: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                line = self.stdout.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"server did not start; stderr: {''.join(self.stderr)}") from None
            if "serving" in line:
                break

    @staticmethod
    def _pump(stream, put) -> None:
        with stream:  # closed at EOF: leaks fail the tests
            for raw in iter(stream.readline, b""):
                put(raw.decode("utf-8", "replace"))

    def lines(self, text: str) -> list[str]:
        return [line for line in list(self.stderr) if text in line]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def try_upgrade(port: int, timeout: float) -> tuple[socket.socket, bool]:
    """Connect and send an upgrade request; (socket, whether the 101 came within ``timeout``)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(upgrade_request(key=new_key()))
    sock.settimeout(timeout)
    try:
        head, _ = read_head(sock)
    except TimeoutError:
        return sock, False
    assert head.startswith(b"HTTP/1.1 101 "), head
    sock.settimeout(5)
    return sock, True


def echo_over(sock: socket.socket, text: str) -> str:
    """Send a masked text frame on an upgraded raw socket; return the text of the reply frame."""
    sock.sendall(encode_frame(OP_TEXT, text.encode(), mask=os.urandom(4)))
    header = b""
    while len(header) < 2:
        header += sock.recv(2 - len(header))
    assert header[0] & 0x0F == OP_TEXT and header[1] < 126, header
    payload = b""
    while len(payload) < header[1]:
        payload += sock.recv(header[1] - len(payload))
    return payload.decode()


@pytest.fixture
def limited_server(tmp_path):
    server = LimitedServer(tmp_path)
    yield server
    server.stop()


def test_out_of_file_descriptors_pauses_accepting_and_recovers(limited_server):
    server = limited_server
    pid = server.proc.pid
    held: list[socket.socket] = []
    stalled = None
    try:
        # Fill the server's descriptor table with WebSocket peers.
        for _ in range(FD_LIMIT + 10):
            sock, upgraded = try_upgrade(server.port, timeout=1.0)
            if not upgraded and open_fds(pid) >= FD_LIMIT - 1:
                stalled = sock  # accepted by the kernel, waiting in the backlog
                break
            if not upgraded:  # only slow (a loaded machine): wait for it
                sock.settimeout(5)
                head, _ = read_head(sock)
                assert head.startswith(b"HTTP/1.1 101 "), head
            held.append(sock)
        assert stalled is not None, "the server never ran out of descriptors"
        assert open_fds(pid) >= FD_LIMIT - 1
        assert wait_until(lambda: server.lines("Too many open files"), 5), "".join(server.stderr)

        # While out of descriptors: alive, quiet, idle, and the existing peers are served.
        cpu_before = cpu_seconds(pid)
        time.sleep(2.0)
        cpu_used = cpu_seconds(pid) - cpu_before
        assert server.proc.poll() is None
        assert cpu_used < 0.5, f"the accept loop spins: {cpu_used:.2f} s of CPU in 2 s"
        assert echo_over(held[0], "still here") == "echo:still here"
        assert echo_over(held[-1], "me too") == "echo:me too"
        assert len(server.lines("Too many open files")) == 1, "".join(server.stderr)
        assert not server.lines("Traceback"), "".join(server.stderr)

        # Free some descriptors: the waiting client is served, then new ones.
        for sock in held[:10]:
            sock.close()
        del held[:10]
        stalled.settimeout(5)
        head, _ = read_head(stalled)
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert echo_over(stalled, "served late") == "echo:served late"
        client = websocket.create_connection(f"ws://127.0.0.1:{server.port}/_ws", timeout=5)
        client.send("fresh")
        assert client.recv() == "echo:fresh"
        client.close()
        assert wait_until(lambda: server.lines("accepting connections again"), 5), "".join(server.stderr)
    finally:
        for sock in held:
            sock.close()
        if stalled is not None:
            stalled.close()

    # Every descriptor given back: a burst well past the limit is served in turn.
    time.sleep(0.2)
    for i in range(FD_LIMIT * 2):
        sock, upgraded = try_upgrade(server.port, timeout=5)
        assert upgraded, f"connection {i} after recovery was not served"
        sock.close()
    assert server.proc.poll() is None
    assert len(server.lines("Too many open files")) == 1
    assert not server.lines("Traceback"), "".join(server.stderr)


# -- 2,000 abrupt connect/disconnect cycles ---------------------------------------------------

CYCLES = 2000
WORKERS = 4
#: RSS may grow this much over the cycles (after gc).  Measured on a 2-CPU
#: Linux box: +0.5 to +1.5 MiB (the allocator keeps some freed arenas); 20 MiB
#: leaves headroom for noisy CI.  A leaked session is caught more precisely by
#: the object census (no Session, Peer or Outbox survives) and the registry
#: and greenlet checks; RSS catches leaks below the Python object level.
RSS_HEADROOM_MIB = 20


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def drop_rst(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def one_cycle(server, i: int) -> None:
    """Connect, upgrade, maybe talk, then drop without a close frame, one of four ways."""
    client = RawClient(server, f"/_ws?i={i}")
    way = i % 4
    if way == 0:  # RST straight after the handshake
        drop_rst(client.sock)
    elif way == 1:  # a message, its echo, then a plain close (FIN, no close frame)
        client.send_frame(OP_TEXT, b"hello %d" % i)
        assert client.read_frame() == (OP_TEXT, b"hello %d" % i)
        client.close()
    elif way == 2:  # RST in the middle of a frame
        client.sock.sendall(encode_frame(OP_BINARY, b"p" * 2000, mask=b"abcd")[:700])
        drop_rst(client.sock)
    else:  # a message, then RST before reading its echo
        client.send_frame(OP_TEXT, b"bye %d" % i)
        drop_rst(client.sock)


def run_cycles(server, start: int, count: int) -> None:
    errors: list = []

    def worker(offset: int) -> None:
        try:
            for i in range(start + offset, start + count, WORKERS):
                one_cycle(server, i)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[:3]


def settled(server) -> bool:
    return (
        server.registry.counts() == {"peers": 0, "topics": 0, "subscribers": 0}
        and not server.peers
        and not server.sessions
    )


def test_two_thousand_abrupt_disconnects_leave_nothing_behind(start_server):
    opened: list = []
    closed: list = []

    def open_(peer):
        opened.append(peer.id)
        peer.subscribe("all")
        peer.subscribe("peer:" + peer.request.args["i"])

    def message(peer, msg):
        peer.send(msg.raw_data)

    def close(peer, details):
        closed.append(details.code)

    server = start_server(app_with(open=open_, message=message, close=close))

    # Warm up (imports, allocator pools, thread stacks), then take the baseline.
    run_cycles(server, 0, 200)
    assert wait_until(lambda: settled(server) and len(closed) == 200, 10)
    # Server-wide greenlets (the keepalive ticker) may outlive the peers; none per peer
    # may (the last ones may still be returning from their close hook: wait for them).
    assert wait_until(lambda: len(live_greenlets(server)) <= 1, 10), live_greenlets(server)
    server_wide = set(live_greenlets(server))
    assert len(server_wide) <= 1, server_wide
    gc.collect()
    baseline = rss_mib()

    started = time.monotonic()
    run_cycles(server, 200, CYCLES)
    elapsed = time.monotonic() - started
    total = 200 + CYCLES
    assert wait_until(lambda: len(closed) == total, 15), (len(opened), len(closed))
    assert wait_until(lambda: settled(server), 10), (server.registry.counts(), len(server.sessions))
    assert len(opened) == total
    assert set(closed) == {1006}, set(closed)
    assert wait_until(lambda: set(live_greenlets(server)) <= server_wide, 10), live_greenlets(server)[:5]
    gc.collect()
    # Not one Session, Peer or Outbox survives (the keepalive ticker used to
    # hold on to the last session it scanned for as long as the server idled).
    assert wait_until(lambda: not survivors(server), 5, interval=0.2), survivors(server)[:5]
    growth = rss_mib() - baseline
    print(
        f"\n{CYCLES} cycles in {elapsed:.2f} s ({elapsed / CYCLES * 1000:.2f} ms each); "
        f"RSS {baseline:.1f} MiB -> {baseline + growth:.1f} MiB ({growth:+.1f} MiB)"
    )
    assert growth < RSS_HEADROOM_MIB, f"RSS grew {growth:.1f} MiB over {CYCLES} cycles"

    # ... and the server is as good as new.
    with RawClient(server, "/_ws?i=final") as client:
        client.send_frame(OP_TEXT, b"after")
        assert client.read_frame() == (OP_TEXT, b"after")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's inheritance of TCP_NODELAY")
def test_tcp_nodelay_is_set_once_on_a_tcp_listener_and_left_alone_on_a_unix_one(tmp_path):
    """Accepted sockets inherit it there (tests/web/test_app.py checks they have it); a Unix socket has none."""
    import gevent.socket

    from syncws.server.listener import ResilientWSGIServer

    tcp = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    unix = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        unix.bind(str(tmp_path / "s"))
        unix.listen()
        over_tcp, over_unix = ResilientWSGIServer(tcp, lambda e, s: []), ResilientWSGIServer(unix, lambda e, s: [])
        over_tcp.init_socket()
        over_unix.init_socket()
        assert over_tcp.nodelay_inherited and tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert not over_unix.nodelay_inherited
    finally:
        tcp.close()
        unix.close()
