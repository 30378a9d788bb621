"""``python -m syncws --workers N``: real processes, a real Redis, real sockets.

Every test runs the CLI as a subprocess in a temporary directory holding a
small chat app, on a port of its own, so that leftover processes can be found
by their command line.  Process liveness is read from /proc: a worker whose
master is gone may be left as a zombie by a container's init, and a zombie
counts as exited.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import textwrap
import time

import pytest
import redis
import requests
import websocket

from syncws.pubsub.broker import channel_name

from ..conftest import wait_until
from ..support import SYNCWS_BOUND as BOUND  # no wait in this module is longer
from ..support import RedisServer, SyncwsProcess, SyncwsRunner, assert_nothing_received, free_port, recv_close

pytestmark = pytest.mark.slow  # subprocesses, browsers, Redis or load: not in the fast loop

CHAT_APP = """
import os

from syncws import App, define_websocket_handler


app = App()
app.get("/pid", lambda request: str(os.getpid()))


def on_open(peer):
    peer.subscribe("chat")
    peer.send("pid:%d" % os.getpid())


def on_message(peer, message):
    peer.publish("chat", message.text())


app.get("/_ws", define_websocket_handler(open=on_open, message=on_message))
"""


# -- processes ---------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of ``pid`` from /proc, None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def children_of(pid: int) -> set[int]:
    """Living processes whose parent is ``pid``."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] == pid and stat[0] not in ("Z", "X"):
                found.add(int(entry))
    return found


def syncws_processes_on(port: int) -> set[int]:
    """Living ``python -m syncws ... --port <port>`` processes, whoever their parent is."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"syncws" in argv and b"--port" in argv and str(port).encode() in argv and alive(int(entry)):
            found.add(int(entry))
    return found


def port_is_free(port: int) -> bool:
    """Nothing listens on ``port`` and it can be bound again."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except OSError:
        pass
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Master(SyncwsProcess):
    """A ``python -m syncws ... --port N`` whose kill() also kills every worker it has, or has left, on that port."""

    def kill(self) -> None:
        workers = children_of(self.pid)  # while they are still its children
        super().kill()  # the master first: it cannot fork replacements any more
        port = int(self.args[self.args.index("--port") + 1]) if "--port" in self.args else 0
        if port:  # a real one: with --port 0 the command line does not tell its processes apart
            workers |= syncws_processes_on(port)
        for pid in workers - {self.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def redis_url(tmp_path):
    """A private redis-server on a free port; missing redis-server is a failure, not a skip."""
    with RedisServer(tmp_path) as server:
        yield server.url


@pytest.fixture
def run(tmp_path):
    """Start ``python -m syncws`` with the chat app in ``tmp_path``; SYNCWS_* come only from ``env``."""
    (tmp_path / "chat.py").write_text(textwrap.dedent(CHAT_APP))
    with SyncwsRunner(tmp_path, Master) as start:
        yield start


# -- clients ------------------------------------------------------------------------------------


class Client:
    def __init__(self, url: str) -> None:
        self.ws = websocket.create_connection(url.replace("http://", "ws://", 1) + "/_ws", timeout=5)
        greeting = str(self.ws.recv())
        assert greeting.startswith("pid:"), greeting
        self.pid = int(greeting[4:])

    def close(self) -> None:
        try:
            self.ws.close(timeout=1)
        except Exception:
            pass


def clients_on_workers(url: str, workers: set[int] | None = None, at_least: int = 4) -> dict[int, list[Client]]:
    """Connect until clients sit on two workers (on every pid of ``workers`` when given).

    Returns pid -> that worker's clients, at least ``at_least`` clients in all.
    """
    by_pid: dict[int, list[Client]] = {}
    deadline = time.monotonic() + BOUND
    count = 0

    def done() -> bool:
        if workers is not None and not workers <= set(by_pid):
            return False
        return len(by_pid) >= 2 and count >= at_least

    while not done():
        assert time.monotonic() < deadline and count < 100, f"clients landed only on {sorted(by_pid)}"
        client = Client(url)
        by_pid.setdefault(client.pid, []).append(client)
        count += 1
    return by_pid


def all_clients(by_pid: dict[int, list[Client]]) -> list[Client]:
    return [client for clients in by_pid.values() for client in clients]


def close_all(by_pid: dict[int, list[Client]]) -> None:
    for client in all_clients(by_pid):
        client.close()


def assert_every_client_is_closed_as_going_away(by_pid: dict[int, list[Client]], code: int = 1001) -> None:
    for client in all_clients(by_pid):
        assert recv_close(client.ws)[0] == code, f"client on worker {client.pid}"


CHAT_CHANNEL = channel_name("syncws", "/_ws", "chat")  # where a peer on /_ws publishes to "chat"


def wait_for_subscribers(url: str, workers: int) -> None:
    """Until every worker's broker has subscribed to the chat channel in Redis.

    A worker subscribes in its own thread once its first client joins "chat";
    a publish relayed before that could not reach it.
    """
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:

        def subscribed() -> bool:
            ((_, count),) = client.pubsub_numsub(CHAT_CHANNEL)
            return count >= workers

        assert wait_until(subscribed, timeout=BOUND), "the workers did not subscribe to the chat topic in Redis"
    finally:
        client.close()


def assert_everyone_else_receives(by_pid: dict[int, list[Client]], sender: Client, text: str) -> None:
    """``text`` from ``sender`` reaches every other client, on every worker, and not the sender."""
    sender.ws.send(text)
    for client in all_clients(by_pid):
        if client is not sender:
            assert client.ws.recv() == text, f"client on worker {client.pid}"
    assert_nothing_received(sender.ws, wait=0.5)


def assert_worker_pids(process: Master, count: int) -> set[int]:
    workers = children_of(process.pid)
    assert len(workers) == count, f"master {process.pid} has children {workers}"
    return workers


def start_two_workers(run, redis_url: str) -> tuple[Master, int, str, set[int]]:
    """The chat app on a free port with ``--workers 2 --broker redis_url``: (master, port, url, worker pids).

    In Python's dev mode, so that a socket or file left to the garbage collector shows on stderr.
    """
    port = free_port()
    process = run("chat:app", "--port", str(port), "--workers", "2", "--broker", redis_url, env={"PYTHONDEVMODE": "1"})
    url, banner = process.wait_for_banner()
    assert url == f"http://127.0.0.1:{port}"
    assert "2 workers" in banner
    return process, port, url, assert_worker_pids(process, 2)


# -- cross-worker pub/sub -------------------------------------------------------------------------


def test_clients_on_different_workers_see_each_others_messages(run, redis_url):
    process, _port, url, workers = start_two_workers(run, redis_url)

    by_pid = clients_on_workers(url, at_least=5)
    try:
        assert set(by_pid) <= workers
        wait_for_subscribers(redis_url, 2)
        first, second = sorted(by_pid)
        assert_everyone_else_receives(by_pid, by_pid[first][0], "from the first worker")
        assert_everyone_else_receives(by_pid, by_pid[second][0], "from the second worker")
        # Exactly once: nobody has anything left over.
        for client in all_clients(by_pid):
            assert_nothing_received(client.ws, wait=0.2)
        # Plain HTTP is answered by the workers, never by the master.
        answered = {int(requests.get(url + "/pid", timeout=5).text) for _ in range(10)}
        assert answered <= workers
    finally:
        close_all(by_pid)
    process.proc.send_signal(signal.SIGTERM)
    assert process.wait() == 0


# -- configuration errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, env, named",
    [
        (["--workers", "2"], {}, "--workers 2"),
        ([], {"SYNCWS_WORKERS": "3"}, "SYNCWS_WORKERS=3"),
    ],
    ids=["flag", "env"],
)
def test_more_than_one_worker_without_a_broker_is_refused(run, args, env, named):
    port = free_port()
    process = run("chat:app", "--port", str(port), *args, env=env)
    assert process.finish() == 2
    lines = process.err.strip().splitlines()
    assert len(lines) == 1, process.err
    message = lines[0]
    assert message.startswith("syncws: error: ")
    assert named in message
    assert "--broker" in message and "SYNCWS_BROKER" in message
    assert "pub/sub" in message and "one worker" in message
    assert "Traceback" not in process.err
    assert process.out == ""
    assert port_is_free(port)


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_bad_worker_count_is_a_usage_error(run, value):
    process = run("chat:app", "--port", str(free_port()), "--workers", value)
    assert process.finish() == 2
    assert process.err.startswith("syncws: error: argument --workers")  # the error and a hint, not the usage
    assert "--workers" in process.err and "positive integer" in process.err
    assert "Traceback" not in process.err


def test_a_bad_syncws_workers_is_a_one_line_error(run, redis_url):
    process = run("chat:app", "--port", str(free_port()), env={"SYNCWS_WORKERS": "many", "SYNCWS_BROKER": redis_url})
    assert process.finish() == 2
    lines = process.err.strip().splitlines()
    assert lines == ["syncws: error: SYNCWS_WORKERS must be a positive integer, got 'many'"]


def test_one_worker_stays_a_single_process_without_a_broker(run):
    port = free_port()
    process = run("chat:app", "--port", str(port), "--workers", "1")
    url, banner = process.wait_for_banner()
    assert "workers" not in banner
    assert int(requests.get(url + "/pid", timeout=5).text) == process.pid
    assert children_of(process.pid) == set()
    process.proc.send_signal(signal.SIGTERM)
    assert process.wait() == 0


def test_an_app_that_cannot_be_imported_fails_fast(run, redis_url):
    port = free_port()
    started = time.monotonic()
    process = run("nosuchmodule:app", "--port", str(port), "--workers", "2", "--broker", redis_url)
    assert process.wait() == 2
    assert time.monotonic() - started < BOUND
    process.join_output()
    lines = process.err.strip().splitlines()
    assert lines == ["syncws: error: cannot import module 'nosuchmodule': no such module"], process.err
    assert "serving" not in process.out
    assert syncws_processes_on(port) == set()
    assert port_is_free(port)


def test_an_app_that_raises_on_import_shows_the_workers_error(run, redis_url):
    port = free_port()
    files = {"broken.py": "raise RuntimeError('boom at import')\n"}
    process = run("broken:app", "--port", str(port), "--workers", "2", "--broker", redis_url, files=files)
    assert process.finish() == 1
    assert "RuntimeError: boom at import" in process.err  # the worker's own traceback
    assert process.err.count("RuntimeError: boom at import") == 1  # one worker tried, not every one
    assert re.search(r"syncws: error: worker \d+ failed to start \(exit status 1\)", process.err)
    assert "serving" not in process.out
    assert syncws_processes_on(port) == set()


def test_port_in_use_is_a_one_line_error_from_the_master(run, redis_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        process = run("chat:app", "--port", str(port), "--workers", "2", "--broker", redis_url)
        assert process.finish() == 1
    lines = process.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"syncws: error: cannot listen on 127.0.0.1:{port}")
    assert children_of(process.pid) == set()


def test_help_describes_workers(run):
    process = run("--help")
    assert process.finish() == 0
    out = " ".join(process.out.split())
    assert "--workers N" in out
    assert "SYNCWS_WORKERS" in out
    assert "needs --broker" in out


# -- stopping ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_master_stops_every_worker(run, redis_url, sig):
    process, port, url, workers = start_two_workers(run, redis_url)
    by_pid = clients_on_workers(url, workers)
    try:
        started = time.monotonic()
        process.proc.send_signal(sig)
        # SIGTERM drains (1012, reconnect elsewhere; over the drain period), SIGINT stops at once (1001).
        assert_every_client_is_closed_as_going_away(by_pid, 1012 if sig == signal.SIGTERM else 1001)
        assert process.wait() == 0
        assert time.monotonic() - started < BOUND
    finally:
        close_all(by_pid)
    process.join_output()
    assert not any(alive(pid) for pid in workers)
    assert syncws_processes_on(port) == set()
    assert port_is_free(port)
    assert "Traceback" not in process.err
    assert "KeyboardInterrupt" not in process.err
    assert "Exception ignored" not in process.err and "ResourceWarning" not in process.err


def test_a_second_signal_kills_workers_that_are_still_draining(run, redis_url):
    process, port, url, workers = start_two_workers(run, redis_url)
    # Clients that never read: their workers wait for close answers that never come.
    by_pid = clients_on_workers(url, workers, at_least=2)
    try:
        process.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert process.proc.poll() is None, "the master did not wait for its draining workers"
        second = time.monotonic()
        process.proc.send_signal(signal.SIGTERM)
        assert process.wait() == 0
        assert time.monotonic() - second < 3.0
    finally:
        close_all(by_pid)
    process.join_output()
    assert "second signal" in process.err
    assert not any(alive(pid) for pid in workers)
    assert port_is_free(port)


def test_workers_stop_by_themselves_when_the_master_is_killed(run, redis_url):
    process, port, url, workers = start_two_workers(run, redis_url)
    by_pid = clients_on_workers(url, workers, at_least=2)
    try:
        process.proc.kill()
        process.proc.wait(5)
        assert_every_client_is_closed_as_going_away(by_pid)
        assert wait_until(lambda: not any(alive(pid) for pid in workers), timeout=10)
    finally:
        close_all(by_pid)
    assert wait_until(lambda: port_is_free(port), timeout=5)


# -- supervision ----------------------------------------------------------------------------------


def test_a_killed_worker_is_replaced_and_the_service_keeps_answering(run, redis_url):
    port = free_port()
    # Configured through the environment alone: SYNCWS_WORKERS and SYNCWS_BROKER.
    process = run("chat:app", "--port", str(port), env={"SYNCWS_WORKERS": "2", "SYNCWS_BROKER": redis_url})
    url, banner = process.wait_for_banner()
    assert "2 workers" in banner
    victim, survivor = sorted(assert_worker_pids(process, 2))

    os.kill(victim, signal.SIGKILL)

    def replacement_pid() -> int | None:
        # The victim is left out by pid: until the kernel has finished it, /proc may show it running.
        current = children_of(process.pid) - {victim}
        new = current - {survivor}
        return new.pop() if survivor in current and len(new) == 1 else None

    assert wait_until(lambda: replacement_pid() is not None, timeout=BOUND), f"no replacement; stderr={process.err!r}"
    replacement = replacement_pid()
    assert replacement is not None and not alive(victim)
    assert wait_until(lambda: f"worker {victim} died unexpectedly (killed by SIGKILL)" in process.err, timeout=5)
    assert wait_until(lambda: f"worker {replacement} ready" in process.err, timeout=10)

    for _ in range(10):
        r = requests.get(url + "/pid", timeout=5)
        assert r.status_code == 200 and int(r.text) in (survivor, replacement)

    by_pid = clients_on_workers(url, {survivor, replacement})
    try:
        wait_for_subscribers(redis_url, 2)
        assert_everyone_else_receives(by_pid, by_pid[replacement][0], "from the replacement")
        assert_everyone_else_receives(by_pid, by_pid[survivor][0], "from the survivor")
    finally:
        close_all(by_pid)
    process.proc.send_signal(signal.SIGTERM)
    assert process.wait() == 0
    assert syncws_processes_on(port) == set()


def test_the_master_gives_up_when_workers_keep_dying(run, redis_url):
    from syncws.cli.workers import MAX_RESTARTS

    process, port, _, _ = start_two_workers(run, redis_url)
    killed: set[int] = set()
    deadline = time.monotonic() + BOUND
    for _ in range(MAX_RESTARTS + 1):
        assert wait_until(
            lambda: len(children_of(process.pid) - killed) == 2 or process.proc.poll() is not None, timeout=BOUND
        )
        assert process.proc.poll() is None, "the master gave up too early"
        victim = min(children_of(process.pid) - killed)
        killed.add(victim)
        os.kill(victim, signal.SIGKILL)
        assert time.monotonic() < deadline
    assert process.finish() == 1
    assert re.search(r"syncws: error: worker \d+ died \(killed by SIGKILL\).*giving up", process.err)
    assert syncws_processes_on(port) == set()
    assert port_is_free(port)
