"""Fixtures of the server tests."""

from __future__ import annotations

import pytest

from ..support import ECHO_APP, SyncwsRunner


@pytest.fixture
def echo_process(tmp_path):
    """``echo_process(*flags, prelude="")``: the URL of a ``python -m syncws`` echo server with those flags.

    ``prelude``: Python run before the app's module (to lower a process limit, say).
    """
    with SyncwsRunner(tmp_path) as run:

        def start(*flags: str, prelude: str = "") -> str:
            files = {"echo_app.py": prelude + ECHO_APP}
            process = run("echo_app:app", "--port", "0", "--no-access-log", *flags, files=files)
            return process.wait_for_url()

        yield start
