"""Server processes: ``python -m syncws`` and other commands run in a subprocess, free ports."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

# -- processes -------------------------------------------------------------------------------


SYNCWS_BOUND = 15.0  # how long a ``python -m syncws`` may take to start, or to exit when asked to


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the moment of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(env: dict | None = None) -> dict:
    """This process's environment without any SYNCWS_* variable, with unbuffered Python output, plus ``env``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SYNCWS_")}
    environ["PYTHONUNBUFFERED"] = "1"
    environ.update(env or {})
    return environ


class ServerProcess:
    """A running server command in ``cwd``; threads drain its stdout and stderr.

    ``self.lines`` gets the lines of the streams named in ``line_streams`` as
    they come.  Its SYNCWS_* variables come only from ``env`` (see
    :func:`subprocess_env`).
    """

    line_streams: tuple = ("stdout",)

    def __init__(self, command: list, *, cwd, env: dict | None = None) -> None:
        self.command = list(command)
        self.proc = subprocess.Popen(
            self.command,
            cwd=str(cwd),
            env=subprocess_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()  # selected streams, line by line, as they come
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._threads = [
            threading.Thread(
                target=self._drain, args=(stream, into, self.lines if name in self.line_streams else None), daemon=True
            )
            for name, stream, into in (
                ("stdout", self.proc.stdout, self.stdout),
                ("stderr", self.proc.stderr, self.stderr),
            )
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _drain(stream, into: list, lines) -> None:
        try:
            for line in stream:
                into.append(line)
                if lines is not None:
                    lines.put(line)
        finally:
            stream.close()  # at EOF: the pipe is ours to close (leaks fail the tests)

    def next_match(self, pattern: str, deadline: float):
        """The next line of :attr:`lines` matching ``pattern`` before ``deadline``; None if it ends or time runs out."""
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    return None
                continue
            match = re.search(pattern, line)
            if match:
                return match
        return None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def out(self) -> str:
        return "".join(self.stdout)

    @property
    def err(self) -> str:
        return "".join(self.stderr)

    def wait(self, timeout: float = SYNCWS_BOUND) -> int:
        """Its exit status; if it has not exited within ``timeout``, kill it and fail.

        Output may still be arriving (from processes that inherited its pipes): see :meth:`finish`.
        """
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self!r} did not exit within {timeout} s; stderr={self.err!r}")

    def finish(self, timeout: float = SYNCWS_BOUND) -> int:
        """:meth:`wait`, then the output is complete: the draining threads are joined."""
        rc = self.wait(timeout)
        self.join_output()
        return rc

    def join_output(self) -> None:
        for t in self._threads:
            t.join(5)

    def terminate(self, timeout: float = 10.0) -> None:
        """Teardown that lets it shut down: SIGTERM, then SIGKILL if it is still running after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """Teardown: SIGKILL, whatever state it is in."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


class SyncwsProcess(ServerProcess):
    """A running ``python -m syncws ARGS`` in ``cwd``."""

    def __init__(self, *args: str, cwd, env: dict | None = None) -> None:
        self.args = list(args)
        super().__init__([sys.executable, "-m", "syncws", *args], cwd=cwd, env=env)

    def __repr__(self) -> str:
        return f"<python -m syncws {' '.join(self.args)} (pid {self.pid})>"

    def wait_for_banner(self, timeout: float = SYNCWS_BOUND) -> tuple[str, str]:
        """(url, the whole banner line) once it says it is serving; if it does not, kill it and fail."""
        match = self.next_match(r"serving .* on (http://\S+)", time.monotonic() + timeout)
        if match:
            return match.group(1), match.string
        self.kill()
        pytest.fail(f"{self!r} did not start; stdout={self.out!r} stderr={self.err!r}")

    def wait_for_url(self, timeout: float = SYNCWS_BOUND) -> str:
        """The URL it serves on, once it says so (see :meth:`wait_for_banner`)."""
        return self.wait_for_banner(timeout)[0]


class SyncwsRunner:
    """Starts ``python -m syncws`` processes in ``cwd``, each of ``process_class``; kills them all on exit.

    ``runner(*args, files={name: source}, env={...})`` writes the (dedented)
    files into ``cwd`` first.
    """

    def __init__(self, cwd: Path, process_class: type[SyncwsProcess] = SyncwsProcess) -> None:
        self.cwd = cwd
        self.process_class = process_class
        self.started: list[SyncwsProcess] = []

    def __call__(self, *args: str, files: dict | None = None, env: dict | None = None) -> SyncwsProcess:
        for name, source in (files or {}).items():
            (self.cwd / name).write_text(textwrap.dedent(source))
        process = self.process_class(*args, cwd=self.cwd, env=env)
        self.started.append(process)
        return process

    def __enter__(self) -> SyncwsRunner:
        return self

    def __exit__(self, *exc) -> None:
        for process in self.started:
            process.kill()
