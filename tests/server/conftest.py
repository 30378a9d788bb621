"""Fixtures of the server tests."""

from __future__ import annotations

import pytest

from ..support import ECHO_APP, SyncwsRunner


@pytest.fixture
def echo_process(tmp_path):
    """``echo_process(*flags)``: the URL of a ``python -m syncws`` echo server with those flags."""
    with SyncwsRunner(tmp_path) as run:

        def start(*flags: str) -> str:
            process = run("echo_app:app", "--port", "0", "--no-access-log", *flags, files={"echo_app.py": ECHO_APP})
            return process.wait_for_url()

        yield start
