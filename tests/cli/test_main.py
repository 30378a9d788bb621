"""``python -m syncws module:app`` as a real subprocess."""

from __future__ import annotations

import signal
import socket

import pytest
import requests
import websocket

from ..support import SyncwsProcess, SyncwsRunner, free_port, recv_close

pytestmark = pytest.mark.slow  # subprocesses, browsers, Redis or load: not in the fast loop

SYNCWS_APP = """
from syncws import App, define_websocket_handler

app = App()
app.get("/", lambda request: "hello from module:app")
app.get("/_ws", define_websocket_handler(
    open=lambda peer: peer.send("welcome"),
    message=lambda peer, msg: peer.send(msg),
))
notcallable = 42
"""

WSGI_APP = """
from syncws import define_websocket_handler

echo = define_websocket_handler(message=lambda peer, msg: peer.send("echo: " + msg.text()))

def application(environ, start_response):
    if environ["PATH_INFO"] == "/_ws":
        return echo(environ, start_response)
    body = ("plain wsgi " + environ["PATH_INFO"]).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

def other(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"the other function"]
"""

FLASK_APP = """
from flask import Flask, g, request
from syncws import define_websocket_handler

server = Flask(__name__)

@server.before_request
def who():
    g.user = request.args.get("user", "anon")

chat = define_websocket_handler(
    open=lambda peer: peer.send("hello " + g.user),
    message=lambda peer, msg: peer.send(g.user + ": " + msg.text()),
)

@server.get("/")
def index():
    return "flask via cli"

@server.get("/rooms/<room>")
def room(room):
    return chat
"""


@pytest.fixture
def cli(tmp_path):
    """``cli(*args, files={name: source})``: ``python -m syncws ARGS`` in ``tmp_path``; all killed at teardown."""
    with SyncwsRunner(tmp_path) as run:
        yield run


def ws(url: str, path: str) -> websocket.WebSocket:
    return websocket.create_connection(url.replace("http://", "ws://", 1) + path, timeout=5)


def stop(process: SyncwsProcess, sig: int = signal.SIGTERM) -> None:
    """Signal the CLI and assert it exits with status 0."""
    process.proc.send_signal(sig)
    assert process.finish() == 0


def assert_ws_replies(url: str, path: str, sent: str, reply: str, greeting: str | None = None) -> None:
    """Connect to ``path``, read the ``greeting`` if one is due, and check the reply to ``sent``."""
    client = ws(url, path)
    try:
        if greeting is not None:
            assert client.recv() == greeting
        client.send(sent)
        assert client.recv() == reply
    finally:
        client.close()


def assert_signal_closes_the_peer(process: SyncwsProcess, url: str, sig: int, echo: str | None = None) -> None:
    """``sig`` closes a connected SYNCWS_APP peer (after ``echo``); the CLI exits 0 without a traceback.

    SIGINT closes with 1001 (going away); SIGTERM drains, with 1012 (service restart).
    """
    client = ws(url, "/_ws")
    try:
        assert client.recv() == "welcome"
        if echo is not None:
            client.send(echo)
            assert client.recv() == echo
        process.proc.send_signal(sig)
        assert recv_close(client)[0] == (1012 if sig == signal.SIGTERM else 1001)
    finally:
        client.close()
    assert process.finish() == 0
    assert "Traceback" not in process.err


# -- serving ---------------------------------------------------------------------------


def test_module_colon_app_on_a_given_port(cli):
    port = free_port()
    process = cli("myapp:app", "--port", str(port), files={"myapp.py": SYNCWS_APP})
    url = process.wait_for_url()
    assert url == f"http://127.0.0.1:{port}"
    r = requests.get(url + "/", timeout=5)
    assert (r.status_code, r.text) == (200, "hello from module:app")

    # SIGTERM drains: connected peers are told to reconnect (1012).
    assert_signal_closes_the_peer(process, url, signal.SIGTERM, echo="through the cli")


@pytest.mark.parametrize(
    "spec, files, path, text, sig",
    [
        ("wsgimod", {"wsgimod.py": WSGI_APP}, "/some/path", "plain wsgi /some/path", signal.SIGTERM),
        ("both", {"both.py": WSGI_APP + "\napp = other\n"}, "/", "the other function", signal.SIGTERM),
        ("wsgimod:other", {"wsgimod.py": WSGI_APP}, "/", "the other function", signal.SIGINT),
    ],
    ids=["plain-module-uses-its-application", "plain-module-prefers-app-over-application", "another-function-by-name"],
)
def test_the_chosen_callable_serves_http(cli, spec, files, path, text, sig):
    process = cli(spec, "--port", "0", files=files)
    url = process.wait_for_url()
    r = requests.get(url + path, timeout=5)
    assert (r.status_code, r.text) == (200, text)
    stop(process, sig)


def test_plain_wsgi_function_upgrades(cli):
    process = cli("wsgimod:application", "--port", "0", files={"wsgimod.py": WSGI_APP})
    url = process.wait_for_url()
    assert requests.get(url + "/x", timeout=5).text == "plain wsgi /x"
    assert_ws_replies(url, "/_ws", "hi", "echo: hi")
    stop(process)


def test_flask_app(cli):
    process = cli("flaskmod:server", "--port", "0", files={"flaskmod.py": FLASK_APP})
    url = process.wait_for_url()
    assert requests.get(url + "/", timeout=5).text == "flask via cli"
    assert_ws_replies(url, "/rooms/lobby?user=bob", "hey", "bob: hey", greeting="hello bob")
    # A plain GET to the WebSocket view is refused with a plain HTTP answer.
    assert requests.get(url + "/rooms/lobby", timeout=5).status_code == 426
    stop(process)


def test_sigint_stops_cleanly(cli):
    process = cli("myapp:app", "--port", "0", files={"myapp.py": SYNCWS_APP})
    url = process.wait_for_url()
    assert_signal_closes_the_peer(process, url, signal.SIGINT)
    assert "KeyboardInterrupt" not in process.err


def test_sigterm_without_connections_stops_and_frees_the_port(cli):
    process = cli("myapp:app", "--port", "0", files={"myapp.py": SYNCWS_APP})
    url = process.wait_for_url()
    port = int(url.rsplit(":", 1)[1])
    stop(process)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_no_monkey_patch_mode_serves_and_stops(cli):
    process = cli("myapp:app", "--port", "0", "--no-monkey-patch", files={"myapp.py": SYNCWS_APP})
    url = process.wait_for_url()
    assert requests.get(url + "/", timeout=5).text == "hello from module:app"
    assert_ws_replies(url, "/_ws", "unpatched", "unpatched", greeting="welcome")
    stop(process)


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("nosuchmodule:app", "nosuchmodule"),
        ("myapp:missing", "missing"),
        ("myapp:notcallable", "notcallable"),
        ("garbage::", "garbage::"),
        ("myapp::", "myapp::"),
        (":app", ":app"),
        ("myapp:not an attr", "not an attr"),
    ],
)
def test_bad_import_strings(cli, spec, fragment):
    process = cli(spec, "--port", "0", files={"myapp.py": SYNCWS_APP})
    assert process.finish() == 2
    err = process.err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("syncws: error:")
    assert fragment in lines[0]
    assert "Traceback" not in err
    assert "serving" not in process.out


def test_module_without_app_or_application(cli):
    process = cli("empty", "--port", "0", files={"empty.py": "x = 1\n"})
    assert process.finish() == 2
    lines = process.err.strip().splitlines()
    assert len(lines) == 1
    assert "app" in lines[0] and "application" in lines[0]
    assert "Traceback" not in process.err


def test_port_in_use_is_a_one_line_error(cli):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        process = cli("myapp:app", "--port", str(port), files={"myapp.py": SYNCWS_APP})
        rc = process.finish()
    assert rc == 1
    lines = [line for line in process.err.strip().splitlines() if line]
    assert lines[-1].startswith("syncws: error:")
    assert str(port) in lines[-1]
    assert "--port" in lines[-1]  # says what to change
    assert "Traceback" not in process.err


def test_a_foreground_serve_on_a_port_in_use_says_so_in_one_line(cli, tmp_path):
    """Issue 21: ``python myapp.py`` with serve() on a taken port: one line, not a chained traceback."""
    import subprocess
    import sys

    from ..support import subprocess_env

    (tmp_path / "myapp.py").write_text(
        "import sys\nfrom syncws import App, serve\nserve(App(), port=int(sys.argv[1]))\n", encoding="utf-8"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "myapp.py", str(port)],
            cwd=tmp_path,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"syncws: error: cannot listen on 127.0.0.1:{port}") and "--port" in lines[0]


@pytest.mark.parametrize(
    ("spec", "hint"),
    [("myapp.py", "type myapp:app"), ("pkg/myapp.py", "type pkg.myapp:app"), ("./pkg/myapp.py:api", "pkg.myapp:api")],
)
def test_a_file_path_instead_of_an_import_string_says_what_to_type(cli, spec, hint):
    process = cli(spec, "--port", "0", files={"myapp.py": SYNCWS_APP})
    assert process.finish() == 2
    lines = process.err.strip().splitlines()
    assert len(lines) == 1 and hint in lines[0], process.err


def test_a_misspelled_variable_is_warned_about(cli):
    process = cli("nosuchmodule:app", env={"SYNCWS_PORTT": "9999", "SYNCWS_PING_INTERVAL": "5"})
    assert process.finish() == 2
    assert "syncws: warning: SYNCWS_PORTT is not a syncws setting and is ignored (did you mean 'SYNCWS_PORT'?)" in (
        process.err
    )
    assert "SYNCWS_PING_INTERVAL" not in process.err


def test_a_bad_flag_is_the_error_and_a_hint_not_the_whole_usage(cli):
    process = cli("myapp:app", "--max-mesage-size", "1")
    assert process.finish() == 2
    lines = process.err.strip().splitlines()
    assert lines[0] == "syncws: error: unrecognized arguments: --max-mesage-size 1"
    assert lines[1].startswith("Example: python -m syncws myapp:app --host")
    assert len(lines) == 3 and "usage:" not in process.err


def test_help(cli, tmp_path):
    process = cli("--help")
    assert process.finish() == 0
    out = process.out
    assert "usage:" in out
    for option in ("--host", "--port", "app"):
        assert option in out
    assert "Example: python -m syncws myapp:app" in out
    assert out.index("--host") < out.index("--port") < out.index("--max-message-size")  # the server's first
    assert process.err == ""


def test_missing_app_argument_is_a_usage_error(cli):
    process = cli()
    assert process.finish() == 2
    assert process.err.startswith("syncws: error: the following arguments are required: app\nExample:")
    assert "Traceback" not in process.err
