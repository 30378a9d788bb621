"""The CLI's development comforts: --reload, --log-level, the access log, the banner,
SYNCWS_* variables for every option, --version; real ``python -m syncws`` processes."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

import pytest
import requests

import syncws
from syncws.base.options import OPTIONS, Scope
from syncws.cli.main import build_parser
from syncws.cli.options import resolve_options

from ..conftest import wait_until
from ..support import free_port, subprocess_env
from .conftest import APP, stop

pytestmark = pytest.mark.slow  # subprocesses, browsers, Redis or load: not in the fast loop


ACCESS_LINE = re.compile(r'"GET /hello\?x=1 HTTP/1\.1" 404')


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
