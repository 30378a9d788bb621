"""The app the metrics tests serve in subprocesses: ``/ws`` says its worker's pid, then echoes."""

from __future__ import annotations

import os

from syncws import App, define_websocket_handler

app = App()
app.get(
    "/ws", define_websocket_handler(open=lambda peer: peer.send(f"pid:{os.getpid()}"), message=lambda p, m: p.send(m))
)
