"""Every Python snippet in README.md and docs/ runs as it is written.

Each ```python block is saved to a file of its own and run in a fresh
interpreter, as ``__main__``, from an empty directory.  The only change the
harness makes is the address: every server binds 127.0.0.1 on a free port (a
snippet may say ``port=3000``; two tests must not fight over it).  A snippet
that ends by itself must exit 0 (one that starts a server with
``background=True`` or through ``TestClient`` and handles no Ctrl-C is such
a script).  A snippet that serves until it is stopped
must start a server, answer an HTTP request on it, and exit 0 on SIGINT, as a
user's Ctrl-C would stop it; a foreground ``serve()`` must log its URL when it
starts and a line when it stops.

Fenced blocks in other languages (bash, js, nginx) are not run.  Snippets that
need Redis get ``REDIS_URL`` pointing at a redis-server the test starts.
"""

from __future__ import annotations

import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest

from ..support.processes import subprocess_env
from ..support.redis import RedisServer

pytestmark = pytest.mark.slow  # one interpreter per snippet

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
READY = "SNIPPET-SERVING "

HARNESS = textwrap.dedent(
    f"""
    import runpy, sys
    import syncws.server.server as _server

    _init = _server.Server.__init__
    def __init__(self, app, host="127.0.0.1", port=3000, **options):
        _init(self, app, "127.0.0.1", 0, **options)  # the one change: a free port
    _server.Server.__init__ = __init__

    _start = _server.Server.start
    def start(self):
        result = _start(self)
        print("{READY}" + self.url, flush=True)
        return result
    _server.Server.start = start

    sys.argv = [sys.argv[1]]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)


def snippets() -> list:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(pytest.param(match.group(1), id=f"{page.relative_to(ROOT)}:{line}"))
    return found


def test_there_are_snippets_to_run():
    assert len(snippets()) >= 15


@pytest.fixture(scope="module")
def redis_url():
    with RedisServer() as redis:
        yield redis.url


@pytest.mark.parametrize("source", snippets())
def test_snippet_runs_as_written(source, tmp_path, redis_url):
    script = tmp_path / "snippet.py"
    script.write_text(source, encoding="utf-8")
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS, encoding="utf-8")
    env = subprocess_env({"REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)})
    proc = subprocess.Popen(
        [sys.executable, str(harness), str(script)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = None
        deadline = time.monotonic() + 30
        while url is None and proc.poll() is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith(READY):
                url = line[len(READY) :].strip()
        # A snippet that starts a background server (itself, or through the test
        # client) and has no Ctrl-C handling is a script: it stops its server and
        # ends by itself.
        background = "background=True" in source or "TestClient(" in source
        ends_by_itself = url is None or (background and "KeyboardInterrupt" not in source)
        if ends_by_itself:
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, f"snippet failed:\n{err}"
            return
        try:
            urllib.request.urlopen(url + "/", timeout=5).close()
        except urllib.error.HTTPError:
            pass  # any HTTP answer shows the server serves
        if "background=True" in source:
            # The server thread said it is ready; give the main thread time to
            # reach its ``try: ... except KeyboardInterrupt`` before "Ctrl-C".
            time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, f"snippet did not stop cleanly on SIGINT:\n{err}"
        if "serve(" in source and "background=True" not in source:
            assert f"syncws: serving on {url}" in err, err
            assert "syncws: stopped" in err, err
        assert "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
