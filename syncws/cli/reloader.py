"""``python -m syncws module:app --reload``: restart the server when the app's files change.

The parent process binds the listening socket once and runs the server in a
child process (the same command line, with ``WERKZEUG_RUN_MAIN=true`` and the
socket's descriptor in ``_SYNCWS_RELOADER_FD``).  The child serves on that
socket, watches files with werkzeug's stat reloader and, on a change, closes
its peers with 1001 and exits 3; the parent then starts a new child on the
same socket, so clients that connect meanwhile wait in the backlog instead of
being refused.

Why not ``werkzeug.serving.run_with_reloader`` as is: it runs the server in a
thread and the file watcher in the main thread, while syncws wants the server
(and gevent's monkey-patching and signal handlers) in the main thread; so the
watcher runs in a greenlet here, using werkzeug's reloader classes.

SIGTERM or SIGINT to the parent is passed on to the child as SIGINT (a quick
stop, closing peers with 1001: development has no load balancer to drain
for) and the parent exits with the child.
The child is in its own process group, so Ctrl-C in a terminal reaches the
parent only and the child gets a single, graceful signal; a child whose
parent disappears (kill -9) stops by itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from ..base.errors import ListenError
from ..server.listener import bind_listener
from ..server.server import Server

log = logging.getLogger("syncws")

CHILD_FD_ENV = "_SYNCWS_RELOADER_FD"
RESTARTED_ENV = "_SYNCWS_RELOADER_RESTARTED"
RELOAD_EXIT = 3  # a child's "a file changed, start me again" (werkzeug's convention)
INTERVAL = 1.0  # seconds between two scans of the watched files
PARENT_CHECK_INTERVAL = 1.0


def run_parent(args: argparse.Namespace) -> int:
    """Bind, then run children until one exits otherwise than for a reload."""
    from werkzeug._reloader import _get_args_for_reloading

    try:
        listener = bind_listener(args.host, args.port)
    except ListenError as exc:
        print(f"syncws: error: {exc}", file=sys.stderr)
        return 1
    fd = listener.fileno()
    command = _get_args_for_reloading()
    child: Any = None
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            # Development: a quick stop (1001 to every peer at once), not a deploy's drain.
            child.send_signal(signal.SIGINT)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info("syncws: reloader (pid %d) watching for file changes", os.getpid())
    restarted = False
    try:
        while True:
            env = dict(os.environ, WERKZEUG_RUN_MAIN="true")
            env[CHILD_FD_ENV] = str(fd)
            if restarted:
                env[RESTARTED_ENV] = "1"
            child = subprocess.Popen(command, env=env, pass_fds=(fd,), process_group=0)
            code: int = child.wait()
            if stopping:
                return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else code
            if code != RELOAD_EXIT:
                return code
            restarted = True
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        listener.close()


def run_child(args: argparse.Namespace, run_server: Callable[..., int]) -> int:
    """Serve on the parent's socket; exit RELOAD_EXIT when a watched file changes."""
    fd = int(os.environ.pop(CHILD_FD_ENV))
    restarted = os.environ.pop(RESTARTED_ENV, "") == "1"
    parent = os.getppid()
    listener = socket.socket(fileno=fd)
    listener.setblocking(False)
    reloaded: list[Any] = []

    def on_started(server: Server) -> None:
        import gevent

        def watch_parent() -> None:
            while os.getppid() == parent:
                gevent.sleep(PARENT_CHECK_INTERVAL)
            log.warning("syncws: the reloader (pid %d) is gone; shutting down", parent)
            server.stop()

        gevent.spawn(watch_parent)
        changed = wait_for_change()
        reloaded.append(changed)
        server.stop()

    try:
        code = run_server(args, listener=listener, on_started=on_started, banner_suffix="; reloading on changes")
    except Exception:
        if not restarted:
            raise
        import traceback

        traceback.print_exc()
        code = 1
    if reloaded:
        return RELOAD_EXIT
    if code != 0 and restarted:
        # The edited app does not import: wait for the next edit rather than exit.
        print("syncws: waiting for a file change to try again", file=sys.stderr, flush=True)
        _wait_without_server()
        return RELOAD_EXIT
    return code


class _Changed(Exception):
    pass


def _reloader_loop() -> Any:
    from werkzeug._reloader import StatReloaderLoop

    class Loop(StatReloaderLoop):
        def trigger_reload(self, filename: str) -> None:
            raise _Changed(os.path.abspath(filename))

    return Loop(interval=INTERVAL)


def wait_for_change() -> str:
    """Return the first watched file that changes (scanning every INTERVAL seconds, in the hub)."""
    import gevent

    loop = _reloader_loop()
    loop.__enter__()  # the first scan: every file's current mtime
    try:
        while True:
            gevent.sleep(INTERVAL)
            loop.run_step()
    except _Changed as exc:
        filename: str = exc.args[0]
        log.info("syncws: detected a change in %s, reloading", filename)
        return filename


def _wait_without_server() -> None:
    import time

    loop = _reloader_loop()
    loop.__enter__()
    parent = os.getppid()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while os.getppid() == parent:
            time.sleep(INTERVAL)
            loop.run_step()
    except _Changed as exc:
        log.info("syncws: detected a change in %s, reloading", exc.args[0])
        return
    sys.exit(0)
