"""The reloader (``python -m syncws app:app --reload``): real processes, a file changed under them."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest
import requests
import websocket

from ..conftest import wait_until
from ..support import free_port, recv_close
from .conftest import APP, stop

pytestmark = pytest.mark.slow  # subprocesses: not in the fast loop


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
