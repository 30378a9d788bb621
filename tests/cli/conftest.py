"""What the CLI's process tests share: a runner of ``python -m syncws`` processes, a small app."""

from __future__ import annotations

import signal

import pytest

from ..support import SyncwsProcess, SyncwsRunner

APP = """
from syncws import App, define_websocket_handler


app = App()
app.get("/", lambda request: "version 1")
app.get("/_ws", define_websocket_handler(open=lambda peer: peer.send("hello from version 1")))
"""


@pytest.fixture
def cli(tmp_path):
    with SyncwsRunner(tmp_path) as runner:
        yield runner


def stop(process: SyncwsProcess) -> None:
    process.proc.send_signal(signal.SIGTERM)
    assert process.finish() == 0
