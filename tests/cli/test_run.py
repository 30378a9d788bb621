"""The CLI's development comforts: --reload, --log-level, the access log, the banner,
SYNCWS_* variables for every option, --version; real ``python -m syncws`` processes."""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests
import websocket

import syncws
from syncws.base.options import OPTIONS, Scope
from syncws.cli.main import build_parser
from syncws.cli.options import resolve_options

from ..conftest import wait_until
from ..support import SyncwsProcess, SyncwsRunner, free_port, recv_close, subprocess_env

pytestmark = pytest.mark.slow  # subprocesses, browsers, Redis or load: not in the fast loop

APP = """
from syncws import App, define_websocket_handler


app = App()
app.get("/", lambda request: "version 1")
app.get("/_ws", define_websocket_handler(open=lambda peer: peer.send("hello from version 1")))
"""

ACCESS_LINE = re.compile(r'"GET /hello\?x=1 HTTP/1\.1" 404')


@pytest.fixture
def cli(tmp_path):
    with SyncwsRunner(tmp_path) as runner:
        yield runner


def parse(*argv: str, env: dict | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(["mod:app", *argv])
    resolve_options(args, env or {})
    return args


def run_cli(*argv: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "syncws", *argv],
        env=subprocess_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


# -- parsing -------------------------------------------------------------------------------


def test_defaults():
    args = parse()
    assert (args.host, args.port, args.log_level, args.access_log, args.reload, args.no_monkey_patch) == (
        "127.0.0.1",
        3000,
        "info",
        True,
        False,
        False,
    )


def test_every_general_option_has_a_variable_and_the_flag_wins():
    env = {
        "SYNCWS_HOST": "0.0.0.0",
        "SYNCWS_PORT": "8123",
        "SYNCWS_LOG_LEVEL": "WARNING",
        "SYNCWS_ACCESS_LOG": "off",
        "SYNCWS_RELOAD": "yes",
        "SYNCWS_NO_MONKEY_PATCH": "1",
    }
    args = parse(env=env)
    assert (args.host, args.port, args.log_level, args.access_log, args.reload, args.no_monkey_patch) == (
        "0.0.0.0",
        8123,
        "warning",
        False,
        True,
        True,
    )
    args = parse("--host", "::1", "--port", "0", "--log-level", "debug", "--access-log", "--no-reload", env=env)
    assert (args.host, args.port, args.log_level, args.access_log, args.reload) == ("::1", 0, "debug", True, False)
    assert parse("--no-access-log").access_log is False
    assert parse("--no-monkey-patch").no_monkey_patch is True
    help_text = " ".join(build_parser().format_help().split())
    for option in OPTIONS:
        assert option.env_var in help_text or option.scope is Scope.LIMIT
    for flag in ("--reload", "--log-level", "--no-access-log", "--version", "--host", "--port"):
        assert flag in help_text


@pytest.mark.parametrize(
    "variable, value, words",
    [
        ("SYNCWS_PORT", "eighty", "port number"),
        ("SYNCWS_PORT", "70000", "port number"),
        ("SYNCWS_LOG_LEVEL", "loud", "debug, info"),
        ("SYNCWS_ACCESS_LOG", "maybe", "true"),
        ("SYNCWS_RELOAD", "2", "true"),
    ],
)
def test_a_bad_variable_is_a_one_line_error(variable, value, words):
    with pytest.raises(ValueError, match=variable):
        parse(env={variable: value})
    result = run_cli("mod:app", env={variable: value})
    assert result.returncode == 2
    assert result.stderr.startswith(f"syncws: error: {variable} must be") and words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_bad_flags_are_refused_by_argparse():
    for argv in (["--port", "-1"], ["--log-level", "chatty"]):
        result = run_cli("mod:app", *argv)
        assert result.returncode == 2 and "usage:" not in result.stderr  # the error and a hint, not the usage
        assert result.stderr.startswith(f"syncws: error: argument {argv[0]}")
        assert "python -m syncws --help" in result.stderr


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"syncws {syncws.__version__}"


def test_reload_with_workers_is_refused():
    for argv, env in ((["--reload", "--workers", "2"], {}), ([], {"SYNCWS_RELOAD": "1", "SYNCWS_WORKERS": "3"})):
        result = run_cli("mod:app", *argv, env=env)
        assert result.returncode == 2
        assert result.stderr.startswith("syncws: error: --reload") and "--workers 1" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


# -- real processes ------------------------------------------------------------------------


def stop(process: SyncwsProcess) -> None:
    process.proc.send_signal(signal.SIGTERM)
    assert process.finish() == 0


def test_banner_and_access_log_by_default(cli):
    process = cli("myapp:app", "--port", "0", files={"myapp.py": APP})
    url, banner = process.wait_for_banner()
    assert banner.strip() == f"syncws: serving myapp:app on {url} (Ctrl-C to stop)"
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
    assert requests.get(url + "/hello?x=1", timeout=5).status_code == 404
    assert wait_until(lambda: ACCESS_LINE.search(process.err), timeout=5), process.err
    stop(process)


@pytest.mark.parametrize(
    "argv, env",
    [(["--no-access-log"], {}), ([], {"SYNCWS_ACCESS_LOG": "0"}), (["--log-level", "warning"], {})],
    ids=["flag", "variable", "log-level-warning"],
)
def test_the_access_log_can_be_turned_off(cli, argv, env):
    process = cli("myapp:app", "--port", "0", *argv, files={"myapp.py": APP}, env=env)
    url = process.wait_for_url()
    assert requests.get(url + "/", timeout=5).text == "version 1"
    requests.get(url + "/hello?x=1", timeout=5)
    time.sleep(0.3)
    stop(process)
    assert "GET /" not in process.err


def test_log_level_debug_and_host_port_from_the_environment(cli):
    port = free_port()
    process = cli(
        "myapp:app",
        files={"myapp.py": APP},
        env={"SYNCWS_HOST": "127.0.0.1", "SYNCWS_PORT": str(port), "SYNCWS_LOG_LEVEL": "debug"},
    )
    url = process.wait_for_url()
    assert url == f"http://127.0.0.1:{port}"
    assert requests.get(url + "/", timeout=5).text == "version 1"
    stop(process)
    assert f"syncws: serving on {url}" in process.err  # a debug-level line


# -- --reload --------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_reload_restarts_on_a_change_and_sigterm_stops_everything(cli, tmp_path):
    port = free_port()
    process = cli("myapp:app", "--port", str(port), "--reload", files={"myapp.py": APP})
    url, banner = process.wait_for_banner()
    assert url == f"http://127.0.0.1:{port}"
    assert "reloading on changes" in banner
    assert requests.get(url + "/", timeout=5).text == "version 1"
    first_children = children_of(process.pid)
    assert len(first_children) == 1, first_children  # the server runs in a child

    client = websocket.create_connection(f"ws://127.0.0.1:{port}/_ws", timeout=10)
    assert client.recv() == "hello from version 1"

    time.sleep(1.1)  # a later mtime than the first scan saw, whatever the file system's resolution
    (tmp_path / "myapp.py").write_text(APP.replace("version 1", "version 2"))

    # The old child closes its peers with 1001 (going away) and a new one serves the new code
    assert recv_close(client)[0] == 1001
    client.close()

    def new_code() -> bool:
        try:
            return requests.get(url + "/", timeout=2).text == "version 2"
        except requests.RequestException:
            return False

    assert wait_until(new_code, timeout=15, interval=0.2), process.err
    assert "detected a change in" in process.err and "myapp.py" in process.err
    client = websocket.create_connection(f"ws://127.0.0.1:{port}/_ws", timeout=10)
    assert client.recv() == "hello from version 2"
    second_children = children_of(process.pid)
    assert len(second_children) == 1 and second_children != first_children
    assert not alive(first_children[0])

    # SIGTERM to the reloader: the child closes its peers with 1001, both exit 0
    process.proc.send_signal(signal.SIGTERM)
    assert recv_close(client)[0] == 1001
    client.close()
    assert process.finish() == 0
    assert wait_until(lambda: not alive(second_children[0]), timeout=5), "the child outlived the reloader"
    assert "Traceback" not in process.err
    with pytest.raises(ConnectionRefusedError):  # nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_reload_survives_an_edit_that_does_not_import(cli, tmp_path):
    process = cli("myapp:app", "--port", "0", "--reload", files={"myapp.py": APP})
    url = process.wait_for_url()
    time.sleep(1.1)
    (tmp_path / "myapp.py").write_text("this is not python\n")
    assert wait_until(lambda: "waiting for a file change" in process.err, timeout=15), process.err
    assert process.proc.poll() is None
    time.sleep(1.1)
    (tmp_path / "myapp.py").write_text(APP.replace("version 1", "version 3"))

    def new_code() -> bool:
        try:
            return requests.get(url + "/", timeout=2).text == "version 3"
        except requests.RequestException:
            return False

    assert wait_until(new_code, timeout=15, interval=0.2), process.err
    stop(process)


def test_reload_parent_killed_child_stops_by_itself(cli):
    process = cli("myapp:app", "--port", "0", "--reload", files={"myapp.py": APP})
    process.wait_for_url()
    (child,) = children_of(process.pid)
    process.kill()
    assert wait_until(lambda: not alive(child), timeout=10), "orphaned reload child"
