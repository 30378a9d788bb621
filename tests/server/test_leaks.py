"""Nothing is left to the garbage collector when a server stops (run on every supported Python).

Each program runs in a fresh interpreter with ``-X dev`` (ResourceWarning and
unraisable exceptions shown on stderr), so a socket, file or watcher that
outlives the hub that owns it is printed ("Exception ignored in ...",
"ResourceWarning: unclosed ...") and fails the test.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
import websocket

from ..support import SyncwsRunner

pytestmark = pytest.mark.slow  # fresh interpreters in subprocesses

EMBEDDED = textwrap.dedent(
    """
    import websocket
    from syncws import App, create_event_stream, define_websocket_handler, serve

    app = App()
    app.get("/_ws", define_websocket_handler(message=lambda peer, message: peer.send(message)))
    app.get("/sse", lambda request: create_event_stream(request))
    for _ in range(3):
        server = serve(app, port=0, background=True, access_log=False)
        client = websocket.create_connection(server.url.replace("http", "ws") + "/_ws", timeout=5)
        client.send("hi")
        assert client.recv() == "hi"
        client.close()
        try:  # a second server on the same port: gevent left its socket to the GC
            serve(app, port=server.port, background=True, access_log=False)
        except OSError:
            pass
        server.stop()
    print("done")
    """
)

ECHO_APP = """
from syncws import App, define_websocket_handler


app = App()
app.get("/_ws", define_websocket_handler(message=lambda peer, message: peer.send(message)))
"""

LEAK_SIGNS = ("Exception ignored", "ResourceWarning", "Traceback")


def test_an_embedded_server_stopped_three_times_leaves_nothing(tmp_path):
    program = tmp_path / "embed.py"
    program.write_text(EMBEDDED)
    result = subprocess.run(
        [sys.executable, "-X", "dev", str(program)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
    assert not any(sign in result.stderr for sign in LEAK_SIGNS), result.stderr


def test_a_foreground_server_stopped_by_sigterm_leaves_nothing(tmp_path):
    with SyncwsRunner(tmp_path) as run:
        process = run(
            "echo_app:app",
            "--port",
            "0",
            "--no-access-log",
            files={"echo_app.py": ECHO_APP},
            env={"PYTHONDEVMODE": "1"},
        )
        url = process.wait_for_url()
        clients = [websocket.create_connection(url.replace("http", "ws") + "/_ws", timeout=5) for _ in range(3)]
        for client in clients:
            client.send("x")
            assert client.recv() == "x"
        process.proc.send_signal(signal.SIGTERM)
        assert process.finish() == 0
        for client in clients:
            client.close()
    assert not any(sign in process.err for sign in LEAK_SIGNS), process.err
