"""A private redis-server for the broker tests."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import redis

from ..conftest import wait_until
from .processes import free_port


class RedisServer:
    """A private redis-server on 127.0.0.1 that keeps nothing on disk.

    ``with RedisServer() as server:`` starts it on a free port, waits until it
    answers PING, and stops it.  ``kill()`` is kill -9; ``start()`` brings it
    back on the same port.  A missing redis-server fails the test, it never
    skips it (``bash scripts/test`` installs it).
    """

    def __init__(self, workdir: Path | None = None, port: int | None = None) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server is not installed: these tests need it (bash scripts/test installs it)")
        self.executable = executable
        self.port = port or free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **options) -> redis.Redis:
        """A client of this server; replies are decoded to str unless ``options`` say otherwise."""
        options = {"socket_timeout": 5, "decode_responses": True, **options}
        return redis.Redis(host="127.0.0.1", port=self.port, **options)

    def start(self) -> RedisServer:
        """Start it (again, on the same port) and wait until it answers PING; fail if it does not."""
        args = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.workdir is not None:
            args += ["--dir", str(self.workdir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client(socket_timeout=1, socket_connect_timeout=1)

        def answers() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"redis-server exited with {self.proc.returncode} (port {self.port} taken?)")
            try:
                return client.ping()
            except redis.RedisError:
                return False

        try:
            if not wait_until(answers, timeout=10):
                self.stop()
                pytest.fail(f"redis-server did not answer PING on port {self.port}")
        finally:
            client.close()
        return self

    def kill(self) -> None:
        """kill -9: no goodbye to any client."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
