"""``gunicorn -k syncws.gunicorn.Worker``: a real gunicorn, real sockets, a real Redis.

gunicorn runs as a subprocess in a temporary directory holding a small chat
app; a worker is ready once it logs "syncws: worker <pid> serving on ...".
"""

from __future__ import annotations

import signal
import sys
import textwrap
import time

import pytest
import redis
import requests
import websocket

pytest.importorskip("gunicorn")

from syncws.pubsub.broker import channel_name

from ..conftest import wait_until
from ..support import (
    RedisServer,
    ServerProcess,
    assert_nothing_received,
    client_frame,
    free_port,
    http_exchange,
    new_key,
    parse_response,
    recv_close,
    upgrade_request,
)

pytestmark = pytest.mark.slow  # subprocesses, browsers, Redis or load: not in the fast loop

BOUND = 15.0  # no wait in this module is longer

APP = """
import os

from syncws import App, create_event_stream, define_websocket_handler


app = App()
app.get("/pid", lambda request: str(os.getpid()))


def on_open(peer):
    peer.subscribe("chat")
    peer.send("pid:%d" % os.getpid())


def on_message(peer, message):
    if message.text() == "ping":
        peer.send("pong")
        return
    peer.publish("chat", message.text())


app.get("/_ws", define_websocket_handler(open=on_open, message=on_message))


@app.get("/sse")
def sse(request):
    stream = create_event_stream(request)
    stream.push("hello from %d" % os.getpid())
    return stream.send()
"""

CHAT_CHANNEL = channel_name("syncws", "/_ws", "chat")


def _control_socket_args() -> list[str]:
    """gunicorn >= 24 opens a control socket in ~/.gunicorn by default: not for tests running side by side."""
    from gunicorn.config import Config

    return ["--no-control-socket"] if "control_socket_disable" in Config().settings else []


class Gunicorn(ServerProcess):
    """``gunicorn -k syncws.gunicorn.Worker ARGS chat:app`` in ``cwd``; gunicorn logs to stderr."""

    line_streams = ("stdout", "stderr")

    def __init__(self, cwd, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            "syncws.gunicorn.Worker",
            "-b",
            f"127.0.0.1:{self.port}",
            *_control_socket_args(),
            *args,
            "chat:app",
        ]
        super().__init__(command, cwd=cwd, env=env)

    @property
    def log(self) -> str:
        return self.out + self.err

    def __repr__(self) -> str:
        return f"<gunicorn on {self.url} (pid {self.pid}); output:\n{self.log}>"

    def wait_for_workers(self, count: int) -> set[int]:
        """The pids of the first ``count`` workers to say they are serving; fail if they do not."""
        pids: set[int] = set()
        deadline = time.monotonic() + BOUND
        while len(pids) < count:
            match = self.next_match(r"syncws: worker (\d+) serving on (\S+)", deadline)
            if match is None:
                self.kill()
                pytest.fail(f"gunicorn did not start {count} workers; output:\n{self.log}")
            assert match.group(2) == self.url, match.string
            pids.add(int(match.group(1)))
        return pids

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)


@pytest.fixture
def gunicorn(tmp_path):
    """Start gunicorn with the chat app in ``tmp_path``; every one started is killed at the end."""
    (tmp_path / "chat.py").write_text(textwrap.dedent(APP))
    started: list[Gunicorn] = []

    def start(*args: str, env: dict | None = None) -> Gunicorn:
        process = Gunicorn(tmp_path, *args, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


#: A drain closes each connection at a random moment of its period (drain_period: 5 s by
#: default), after the worker's next tick (0.5 s): longer than a client's 5 s read timeout.
DRAIN_WAIT = 5.0 + 0.5 + 5.0


def recv_drain_close(client: Client) -> int | None:
    """The close code a client gets from a drain (1012), waiting as long as a drain may take."""
    client.ws.settimeout(DRAIN_WAIT)
    return recv_close(client.ws)[0]


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


def first_event(url: str) -> tuple[requests.Response, str]:
    """Open ``/sse`` and read its first ``data:`` line; the response stays open."""
    response = requests.get(url + "/sse", stream=True, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    lines = response.iter_lines(decode_unicode=True)
    for line in lines:
        if isinstance(line, str) and line.startswith("data:"):
            return response, line[len("data:") :].strip()
    pytest.fail("the event stream ended before its first event")


def stream_ends(response: requests.Response) -> bool:
    """Read the rest of an open event stream; True if the server ends it (within the read timeout)."""
    try:
        for _ in response.iter_content(chunk_size=None):
            pass
    except requests.exceptions.RequestException:
        return False
    return True


def wait_for_subscribers(redis_url: str, count: int) -> None:
    """Until ``count`` workers' brokers subscribe to the chat channel (each does so in its own thread)."""
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:

        def subscribed() -> bool:
            ((_, number),) = client.pubsub_numsub(CHAT_CHANNEL)
            return number >= count

        assert wait_until(subscribed, timeout=BOUND), "the workers did not subscribe to the chat topic in Redis"
    finally:
        client.close()


# -- one worker ------------------------------------------------------------------------------------


def test_one_worker_chats_streams_outlives_the_timeout_and_drains_with_1012(gunicorn):
    # --timeout 2: gunicorn would kill a worker that has not checked in for 2 s.
    process = gunicorn("-w", "1", "--timeout", "2", "--graceful-timeout", "10")
    (worker,) = process.wait_for_workers(1)
    assert requests.get(process.url + "/pid", timeout=5).text == str(worker)

    first, second = Client(process.url), Client(process.url)
    assert first.pid == second.pid == worker
    first.ws.send("hello")
    assert second.ws.recv() == "hello"
    assert_nothing_received(first.ws)  # a peer's publish skips the peer itself
    second.ws.send("hi back")
    assert first.ws.recv() == "hi back"

    stream, data = first_event(process.url)
    assert data == f"hello from {worker}"

    # Long-lived: more than twice --timeout with nothing sent, and the worker is the same one.
    time.sleep(5)
    first.ws.send("ping")
    assert first.ws.recv() == "pong"
    second.ws.send("still here")
    assert first.ws.recv() == "still here"
    assert requests.get(process.url + "/pid", timeout=5).text == str(worker)
    assert "WORKER TIMEOUT" not in process.log

    process.send_signal(signal.SIGTERM)  # gunicorn's graceful stop: a drain (service restart)
    assert recv_drain_close(first) == 1012
    assert recv_drain_close(second) == 1012
    assert stream_ends(stream), "the event stream was not ended"
    first.close()
    second.close()
    assert process.finish() == 0
    assert "Traceback" not in process.log, process.log


def test_sigint_is_a_quick_stop_that_still_says_going_away(gunicorn):
    process = gunicorn("-w", "1", "--graceful-timeout", "10")
    process.wait_for_workers(1)
    client = Client(process.url)
    process.send_signal(signal.SIGINT)
    assert recv_close(client.ws)[0] == 1001
    client.close()
    assert process.finish() == 0


def test_the_worker_refuses_smuggled_upgrades_and_stops_leaving_nothing(gunicorn):
    # -X dev in the worker: a socket or file left to the garbage collector is printed on stderr.
    process = gunicorn("-w", "1", env={"PYTHONDEVMODE": "1"})
    process.wait_for_workers(1)
    smuggled = upgrade_request(key=new_key(), extra="Content-Length: 10\r\n") + client_frame(0x1, b"smug")
    assert parse_response(http_exchange(process, smuggled))[0] == 400
    chunked = upgrade_request(key=new_key(), extra="Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n"
    assert parse_response(http_exchange(process, chunked))[0] == 400
    no_host = upgrade_request(key=new_key()).replace(b"Host: 127.0.0.1\r\n", b"")
    assert parse_response(http_exchange(process, no_host))[0] == 400
    spaced = upgrade_request(key=new_key()).replace(b"Upgrade: websocket", b"Upgrade : websocket")
    assert parse_response(http_exchange(process, spaced))[0] == 400
    client = Client(process.url)  # a well-formed upgrade still works
    process.send_signal(signal.SIGTERM)
    assert recv_drain_close(client) == 1012
    client.close()
    assert process.finish() == 0
    assert not any(sign in process.err for sign in ("Exception ignored", "ResourceWarning")), process.err


# -- two workers and Redis -----------------------------------------------------------------------


def clients_on_workers(url: str, workers: set[int], at_least: int = 4) -> dict[int, list[Client]]:
    """Connect until clients sit on every worker of ``workers``: pid -> that worker's clients."""
    by_pid: dict[int, list[Client]] = {}
    deadline = time.monotonic() + BOUND
    count = 0
    while not (set(by_pid) >= workers and count >= at_least):
        assert time.monotonic() < deadline and count < 100, f"clients landed only on {sorted(by_pid)}"
        client = Client(url)
        by_pid.setdefault(client.pid, []).append(client)
        count += 1
    assert set(by_pid) == workers
    return by_pid


@pytest.mark.parametrize("how", ["environment", "gunicorn -e"])
def test_two_workers_with_redis_share_pub_sub_and_drain_with_1012(gunicorn, tmp_path, how):
    with RedisServer(tmp_path) as redis_server:
        if how == "environment":
            process = gunicorn("-w", "2", "--timeout", "2", env={"SYNCWS_BROKER": redis_server.url})
        else:
            process = gunicorn("-w", "2", "--timeout", "2", "-e", f"SYNCWS_BROKER={redis_server.url}")
        workers = process.wait_for_workers(2)
        by_pid = clients_on_workers(process.url, workers)
        clients = [client for group in by_pid.values() for client in group]
        try:
            wait_for_subscribers(redis_server.url, 2)
            for pid in sorted(by_pid):
                sender = by_pid[pid][0]
                text = f"from worker {pid}"
                sender.ws.send(text)
                for client in clients:
                    if client is not sender:
                        assert client.ws.recv() == text, f"client on worker {client.pid}"
                assert_nothing_received(sender.ws, wait=0.3)
            for client in clients:  # exactly once
                assert_nothing_received(client.ws, wait=0.1)
            answered = {int(requests.get(process.url + "/pid", timeout=5).text) for _ in range(6)}
            assert answered <= workers

            process.send_signal(signal.SIGTERM)
            for client in clients:
                assert recv_drain_close(client) == 1012, f"client on worker {client.pid}"
        finally:
            for client in clients:
                client.close()
        assert process.finish() == 0
        assert "Traceback" not in process.log, process.log


def test_gunicorns_tls_options_serve_https_and_wss(gunicorn, tmp_path):
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile, bundle = tmp_path / "cert.pem", tmp_path / "key.pem", str(tmp_path / "ca.pem")
    cert.cert_chain_pems[0].write_to_path(certfile)
    cert.private_key_pem.write_to_path(keyfile)
    ca.cert_pem.write_to_path(bundle)
    process = gunicorn("-w", "1", "--certfile", str(certfile), "--keyfile", str(keyfile))
    process.url = process.url.replace("http://", "https://", 1)
    process.wait_for_workers(1)  # the worker says it serves https://
    response = requests.get(process.url + "/sse", verify=bundle, stream=True, timeout=5)
    try:
        assert response.status_code == 200
        assert next(line for line in response.iter_lines(decode_unicode=True) if line.startswith("data:"))
    finally:
        response.close()
    client = websocket.create_connection(
        process.url.replace("https://", "wss://", 1) + "/_ws", sslopt={"ca_certs": bundle}, timeout=5
    )
    try:
        assert client.recv().startswith("pid:")
    finally:
        client.close()
    process.send_signal(signal.SIGTERM)
    assert process.wait() == 0


def test_two_workers_without_a_broker_are_refused_as_workers_is(gunicorn):
    """Issue 21: gunicorn -w 2 without SYNCWS_BROKER delivered a publish to some clients only; now it stops."""
    refused = gunicorn("-w", "2")
    assert refused.wait() != 0
    assert "gunicorn -w 2 needs a broker: with in-memory pub/sub each worker would have its own subscribers" in (
        refused.log
    )
    assert "set SYNCWS_BROKER=redis://HOST:6379/0" in refused.log


def test_two_workers_metrics_need_the_multiprocess_directory_and_then_count_both(gunicorn, tmp_path):
    from .test_metrics import scrape, value

    metrics = f"127.0.0.1:{free_port()}"
    with RedisServer(tmp_path) as redis_server:
        broker = {"SYNCWS_BROKER": redis_server.url}
        refused = gunicorn("-w", "2", env={"SYNCWS_METRICS": metrics, **broker})
        refused.wait()
        assert "PROMETHEUS_MULTIPROC_DIR" in refused.log  # the worker says what is missing, and gunicorn stops

        shared = tmp_path / "metrics"
        shared.mkdir()
        env = {"SYNCWS_METRICS": metrics, "PROMETHEUS_MULTIPROC_DIR": str(shared), **broker}
        process = gunicorn("-w", "2", env=env)
        process.wait_for_workers(2)
        clients, pids = [], set()
        while len(pids) < 2 and len(clients) < 60:
            client = Client(process.url)
            pids.add(client.pid)
            clients.append(client)
        assert len(pids) == 2
        url = f"http://{metrics}/metrics"
        count = len(clients)
        assert wait_until(
            lambda: (
                value(scrape(url), "syncws_connections", kind="websocket") == count
                and value(scrape(url), "syncws_websocket_connections_total") == count
            ),
            timeout=10,
        ), scrape(url)
        for client in clients:
            client.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait() == 0
