"""``syncws.mount(app, routes)``: WebSocket handlers and event streams in front of any WSGI app.

Each site is checked served in-process (``serve(background=True)``) and under
``python -m syncws``: a plain WSGI function, and a real Django project
(tests/apps/django_site) whose ``wsgi.application`` is Django's own WSGI
handler with a chat and an event stream mounted in front.
"""

from __future__ import annotations

import json
import socket
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import websocket
from werkzeug.test import EnvironBuilder

import syncws
from syncws import mount, serve
from syncws.web.mount import Mount

from ..conftest import connect, raw_request
from ..support import SyncwsRunner, free_port, parse_response, upgrade_request

REPO = Path(__file__).resolve().parents[2]
BOUND = 5.0  # seconds any single wait in this file may take

PLAIN_APP = """
import syncws


def site(environ, start_response):
    path = environ["PATH_INFO"]
    if environ["REQUEST_METHOD"] == "POST":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("201 Created", [
            ("Content-Type", environ.get("CONTENT_TYPE", "")),
            ("X-Length", str(len(body))),
        ])
        return [b"posted:", body]
    if path == "/missing":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"plain 404"]
    start_response("200 OK", [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("X-Plain", "yes"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ])
    keys = ",".join(sorted(k for k in environ if k.startswith("werkzeug.")))
    upgrade = environ.get("HTTP_UPGRADE", "-")
    return [f"plain {path} ?{environ['QUERY_STRING']} upgrade={upgrade} werkzeug={keys}".encode()]


echo = syncws.define_websocket_handler(message=lambda peer, message: peer.send(message))


def events(request, **values):
    stream = syncws.create_event_stream(request)
    stream.push({"event": "hello", "data": values.get("name", "all")})
    return stream


app = syncws.mount(site, {
    "/_ws": echo,
    "/rooms/<room>": echo,
    "/events": events,
    "/events/<name>": events,
})
"""


def _site(url: str) -> SimpleNamespace:
    """What conftest's ``connect``/``raw_request`` need: ``url`` and ``port``."""
    return SimpleNamespace(url=url, port=int(url.rsplit(":", 1)[1]))


@pytest.fixture(scope="module", params=["serve", pytest.param("cli", marks=pytest.mark.slow)])
def plain(request, tmp_path_factory):
    """The plain WSGI function with the mount, in-process or under ``python -m syncws``."""
    if request.param == "serve":
        namespace: dict = {}
        exec(compile(textwrap.dedent(PLAIN_APP), "plainapp.py", "exec"), namespace)
        server = serve(namespace["app"], host="127.0.0.1", port=0, background=True, access_log=False)
        try:
            yield _site(server.url)
        finally:
            server.stop(timeout=2)
    else:
        with SyncwsRunner(tmp_path_factory.mktemp("mount")) as run:
            process = run("plainapp:app", "--port", str(free_port()), files={"plainapp.py": PLAIN_APP})
            yield _site(process.wait_for_url())
            process.terminate()


@pytest.fixture(scope="module")
def django_site():
    """tests/apps/django_site under ``python -m syncws``, from the repository root."""
    pytest.importorskip("django")
    with SyncwsRunner(REPO) as run:
        process = run(
            "tests.apps.django_site.wsgi:application",
            "--port",
            str(free_port()),
            env={"DJANGO_SETTINGS_MODULE": "tests.apps.django_site.settings"},
        )
        site = _site(process.wait_for_url())
        site.process = process
        yield site
        process.terminate()


class SseClient:
    """A bare-socket ``text/event-stream`` reader with bounded waits."""

    def __init__(self, site, path: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", site.port), timeout=BOUND)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
        self.data = b""

    def read_until(self, marker: bytes, timeout: float = BOUND) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.data:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{marker!r} not received; got {self.data!r}"
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            assert chunk, f"stream closed before {marker!r}; got {self.data!r}"
            self.data += chunk
        return self.data

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SseClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def assert_not_upgraded(data: bytes) -> None:
    assert not data.startswith(b"HTTP/1.1 101"), data
    assert b"sec-websocket-accept" not in data.lower(), data


# -- the mount itself, called directly -------------------------------------------


def _environ(path: str, **kwargs) -> dict:
    return EnvironBuilder(path=path, **kwargs).get_environ()


def test_pass_through_hands_the_wrapped_app_the_same_untouched_environ():
    seen = []

    def app(environ, start_response):
        seen.append(environ)
        start_response("200 OK", [])
        return [b"ok"]

    mounted = mount(app, {"/_ws": syncws.define_websocket_handler(), "/rooms/<room>": lambda request, room: room})
    for path in ("/", "/other", "/_ws/", "/_wsx", "/rooms/", "/rooms/a/b", "/ROOMS/a"):
        environ = _environ(path, headers={"Upgrade": "websocket", "Connection": "Upgrade"})
        before = dict(environ)
        assert list(mounted(environ, lambda status, headers: None)) == [b"ok"]
        assert seen[-1] is environ
        assert environ == before, path


def test_views_get_the_request_and_the_rule_values():
    def room(request, room):
        return {"room": room, "method": request.method, "args": request.view_args}

    mounted = mount(lambda e, s: [b"app"], {"/rooms/<room>": room})
    response = []
    body = b"".join(mounted(_environ("/rooms/blue", method="POST"), lambda s, h: response.append((s, h))))
    assert response[0][0] == "200 OK"
    assert ("Content-Type", "application/json") in response[0][1]
    assert json.loads(body) == {"room": "blue", "method": "POST", "args": {"room": "blue"}}


def test_a_failing_view_is_a_500_and_an_http_exception_its_own_answer(caplog):
    from werkzeug.exceptions import Forbidden

    def boom(request):
        raise RuntimeError("boom")

    def forbidden(request):
        raise Forbidden()

    mounted = mount(lambda e, s: [b"app"], {"/boom": boom, "/no": forbidden})
    statuses = []
    list(mounted(_environ("/boom"), lambda s, h: statuses.append(s)))
    list(mounted(_environ("/no"), lambda s, h: statuses.append(s)))
    assert statuses == ["500 INTERNAL SERVER ERROR", "403 FORBIDDEN"]
    assert "view for GET /boom failed" in caplog.text


def test_bad_arguments_are_refused_at_once():
    app = lambda e, s: []  # noqa: E731
    with pytest.raises(TypeError):
        mount(None, {})
    with pytest.raises(TypeError):
        mount(app, [("/_ws", app)])
    with pytest.raises(ValueError):
        mount(app, {"_ws": app})
    with pytest.raises(TypeError):
        mount(app, {"/_ws": "not callable"})
    assert isinstance(mount(app, {}), Mount)
    assert syncws.mount is mount


# -- a plain WSGI function, in-process and under python -m syncws -----------------


def test_plain_pass_through_keeps_status_headers_and_body(plain):
    response = requests.get(plain.url + "/some/page?x=1&y=%20z", timeout=BOUND)
    assert response.status_code == 200
    assert response.headers["X-Plain"] == "yes"
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.text == "plain /some/page ?x=1&y=%20z upgrade=- werkzeug="
    raw = raw_request(plain, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"\r\nSet-Cookie: a=1\r\n" in raw and b"\r\nSet-Cookie: b=2\r\n" in raw

    missing = requests.get(plain.url + "/missing", timeout=BOUND)
    assert (missing.status_code, missing.text) == (404, "plain 404")


def test_plain_pass_through_keeps_post_bodies(plain):
    body = bytes(range(256)) * 800  # 200 KiB, every byte value
    response = requests.post(
        plain.url + "/upload", data=body, timeout=BOUND, headers={"Content-Type": "application/x-test"}
    )
    assert response.status_code == 201
    assert response.headers["Content-Type"] == "application/x-test"
    assert response.headers["X-Length"] == str(len(body))
    assert response.content == b"posted:" + body


def test_plain_upgrade_requests_to_other_paths_go_to_the_app_unupgraded(plain):
    for path in ("/", "/other", "/_ws/", "/rooms/", "/events/a/b"):
        data = raw_request(plain, upgrade_request(path))
        assert_not_upgraded(data)
        status, _headers, body = parse_response(data)
        assert status == 200, (path, data)
        assert body.startswith(f"plain {path} ?".encode()) and b"upgrade=websocket" in body, body


@pytest.mark.parametrize("path", ["/_ws", "/rooms/blue"])
def test_plain_websocket_paths_upgrade_and_echo(plain, path):
    client = connect(plain, path)
    try:
        client.send("hello")
        assert client.recv() == "hello"
        client.send_binary(b"\x00\xff")
        assert client.recv() == b"\x00\xff"
    finally:
        client.close()


def test_plain_get_on_a_websocket_path_is_the_handlers_426(plain):
    response = requests.get(plain.url + "/_ws", timeout=BOUND)
    assert response.status_code == 426
    assert response.headers["Upgrade"].lower() == "websocket"


@pytest.mark.parametrize("path, name", [("/events", "all"), ("/events/bob", "bob")])
def test_plain_event_stream_paths_stream(plain, path, name):
    with SseClient(plain, path) as client:
        data = client.read_until(f"event: hello\ndata: {name}\n\n".encode())
        head = data.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 200")
        assert b"content-type: text/event-stream" in head


# -- a real Django project under python -m syncws -------------------------------


@pytest.mark.slow  # python -m syncws in a subprocess
def test_django_pages_are_served_by_django(django_site):
    hello = requests.get(django_site.url + "/hello/?name=Ada", timeout=BOUND)
    assert hello.status_code == 200
    assert hello.text == "<h1>Hello, Ada!</h1>"
    assert hello.headers["X-Django"] == "yes"
    assert hello.headers["Content-Type"] == "text/html; charset=utf-8"

    status = requests.get(django_site.url + "/api/status", timeout=BOUND)
    assert status.status_code == 200
    assert status.json() == {"framework": "django", "method": "GET", "path": "/api/status"}

    # Django's own answers: APPEND_SLASH's redirect and its DEBUG=False 404 page
    redirect = requests.get(django_site.url + "/hello?name=x", timeout=BOUND, allow_redirects=False)
    assert redirect.status_code == 301
    assert redirect.headers["Location"] == "/hello/?name=x"
    missing = requests.get(django_site.url + "/nope", timeout=BOUND)
    assert missing.status_code == 404
    assert "Not Found" in missing.text


@pytest.mark.slow  # python -m syncws in a subprocess
def test_django_post_bodies_pass_through_intact(django_site):
    body = json.dumps({"text": "é" * 5000, "n": list(range(1000))}).encode()
    response = requests.post(
        django_site.url + "/echo", data=body, timeout=BOUND, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 201
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.content == body


@pytest.mark.slow  # python -m syncws in a subprocess
def test_django_upgrade_requests_to_django_paths_are_not_upgraded(django_site):
    data = raw_request(django_site, upgrade_request("/api/status"))
    assert_not_upgraded(data)
    status, _, body = parse_response(data)
    assert status == 200 and json.loads(body)["framework"] == "django"
    data = raw_request(django_site, upgrade_request("/chat/"))
    assert_not_upgraded(data)
    assert parse_response(data)[0] == 404


@pytest.mark.slow  # python -m syncws in a subprocess
def test_django_websocket_chat_between_two_clients(django_site):
    alice = connect(django_site, "/chat/lobby")
    bob = connect(django_site, "/chat/lobby")
    elsewhere = connect(django_site, "/chat/kitchen")
    try:
        for client, room in ((alice, "lobby"), (bob, "lobby"), (elsewhere, "kitchen")):
            assert json.loads(client.recv()) == {"joined": f"/chat/{room}"}
        alice.send("hi bob")
        assert bob.recv() == "/chat/lobby: hi bob"
        bob.send("hi alice")
        assert alice.recv() == "/chat/lobby: hi alice"
        # nobody hears their own message, and another room hears nothing
        for client in (alice, elsewhere):
            client.settimeout(0.3)
            with pytest.raises(websocket.WebSocketTimeoutException):
                client.recv()
    finally:
        for client in (alice, bob, elsewhere):
            client.close()
    plain_get = requests.get(django_site.url + "/chat/lobby", timeout=BOUND)
    assert plain_get.status_code == 426


@pytest.mark.slow  # python -m syncws in a subprocess
def test_django_event_stream_and_a_django_view_publishing_into_it(django_site):
    with SseClient(django_site, "/events?who=ada") as client:
        data = client.read_until(b"event: ready\ndata: ada\n\n")
        assert b"content-type: text/event-stream" in data.split(b"\r\n\r\n", 1)[0].lower()
        # a Django view publishes through the server that runs it
        answer = requests.get(django_site.url + "/announce?text=hello", timeout=BOUND)
        assert answer.json() == {"published": "hello"}
        client.read_until(b'data: {"announce":"hello"}\n\n')
