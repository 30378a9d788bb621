"""``python -m syncws module:app --workers N``: a pre-fork master and N workers.

The master binds the listening socket once, before it forks and before any
gevent hub exists, then forks the workers.  Each worker inherits the socket,
monkey-patches (unless ``--no-monkey-patch``), imports the app and serves it
with its own :class:`~syncws.server.Server` and its own broker (a Redis broker
starts threads, so it is created after the fork).  The kernel hands every new
connection to whichever worker accepts it first.

Pub/sub between workers goes through the broker, which is why more than one
worker needs one: with in-process pub/sub a publish would reach only the
clients of the worker it was made on.

The master never imports the app and never serves.  It:

* starts the first worker alone and waits until it is serving, so that an app
  that cannot be imported fails once, with that worker's error, and the
  master exits with the worker's status; then it starts the others;
* prints one "serving ... with N workers" line once every worker is ready;
* replaces a worker that dies (at most ``MAX_RESTARTS`` within
  ``RESTART_WINDOW`` seconds, then it gives up and exits 1); a worker that
  exits before it ever served is a start-up failure and stops everything;
* passes SIGTERM or SIGINT on to every worker: SIGTERM drains (readiness
  fails, peers are closed with 1012 over ``drain_period``), SIGINT stops at
  once (1001); it waits for the drain plus ``GRACEFUL_TIMEOUT`` seconds, then
  SIGKILLs what is left, and exits 0.  A second signal kills the workers at
  once.

A Ctrl-C in a terminal reaches the whole process group: each worker stops
on its own SIGINT and ignores the master's repeat.  Workers stop by
themselves when the master disappears.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections import deque
from typing import Any

from ..base.errors import ListenError
from ..base.options import BY_NAME
from ..integrations.metrics import MULTIPROC_ENV
from ..server.listener import bind_listener, url_for
from .options import server_options
from .run import build_server, configure_logging

log = logging.getLogger("syncws")

GRACEFUL_TIMEOUT = 10.0  # master: SIGTERM to the workers, then SIGKILL after this
WORKER_DRAIN = 5.0  # worker: how long its peers get to answer the 1001 close
KILL_WAIT = 5.0  # master: how long to reap SIGKILLed workers before giving up
MAX_RESTARTS = 5  # unexpected worker deaths tolerated ...
RESTART_WINDOW = 60.0  # ... within this many seconds
PARENT_CHECK_INTERVAL = 1.0  # worker: how often it checks that its master is alive

_MASTER_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by {name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


class _Worker:
    __slots__ = ("pid", "ready")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ready = False


class Master:
    """Fork, watch and stop ``count`` workers serving ``args.app`` on ``listener``."""

    def __init__(self, args: argparse.Namespace, listener: socket.socket, count: int) -> None:
        self.args = args
        self.listener = listener
        self.count = count
        self.pid = os.getpid()
        self.workers: dict[int, _Worker] = {}
        self.restarts: deque[Any] = deque()
        self.announced = False
        self._signals: list[int] = []
        self._ready_buffer = b""
        self._wake_r = self._wake_w = self._ready_r = self._ready_w = -1

    # -- main loop -------------------------------------------------------------------
    def run(self) -> int:
        previous = self._install_signals()
        try:
            try:
                return self._run()
            except BaseException:  # e.g. fork() failed: do not leave workers behind
                self._stop_workers(1)
                raise
        finally:
            self._restore_signals(previous)
            for fd in (self._wake_r, self._wake_w, self._ready_r, self._ready_w):
                if fd >= 0:
                    os.close(fd)
            self.listener.close()

    def _run(self) -> int:
        self._spawn()  # the first worker alone: a broken app fails once, clearly
        while True:
            self._wait_for_events(1.0)
            if self._signals:
                sig = self._signals[0]
                self._signals.clear()
                log.info("syncws: shutting down %d worker%s", len(self.workers), "s" if len(self.workers) != 1 else "")
                return self._stop_workers(0, sig)
            ended = self._reap()
            # After reaping: a reaped worker wrote its "ready" line before it
            # ended, so the line is in the pipe now and counts before its exit.
            for pid in self._read_ready():
                self._on_ready(pid)
            for pid, status in ended:
                code = self._on_exit(pid, status)
                if code is not None:
                    return self._stop_workers(code)

    def _on_ready(self, pid: int) -> None:
        worker = self.workers.get(pid)
        if worker is None:
            return
        worker.ready = True
        log.info("syncws: worker %d ready", pid)
        if self.announced:
            return
        if len(self.workers) < self.count:
            for _ in range(self.count - len(self.workers)):
                self._spawn()
        elif all(w.ready for w in self.workers.values()):
            self.announced = True
            url = url_for(self.args.host, self.args.port, bool(getattr(self.args, "certfile", None)))
            print(
                f"syncws: serving {self.args.app} on {url} with {self.count} workers (Ctrl-C to stop)",
                flush=True,
            )

    def _on_exit(self, pid: int, status: int) -> int | None:
        """A worker ended on its own: replace it, or return the master's exit status."""
        worker = self.workers.pop(pid, None)
        if worker is None:
            return None
        how = describe_status(status)
        if not worker.ready and not os.WIFSIGNALED(status):
            code = os.waitstatus_to_exitcode(status) or 1
            if code != 2:  # 2: the worker has printed its own one-line error
                print(f"syncws: error: worker {pid} failed to start ({how})", file=sys.stderr, flush=True)
            return code
        now = time.monotonic()
        while self.restarts and now - self.restarts[0] > RESTART_WINDOW:
            self.restarts.popleft()
        if len(self.restarts) >= MAX_RESTARTS:
            print(
                f"syncws: error: worker {pid} died ({how}); {len(self.restarts) + 1} workers died "
                f"within {RESTART_WINDOW:g} s, giving up",
                file=sys.stderr,
                flush=True,
            )
            return 1
        self.restarts.append(now)
        log.warning("syncws: worker %d died unexpectedly (%s); starting a replacement", pid, how)
        self._spawn()
        return None

    # -- stopping --------------------------------------------------------------------------
    def _stop_workers(self, code: int, sig: int = signal.SIGTERM) -> int:
        """Stop every worker: SIGTERM drains them (a deploy), SIGINT stops them at once (Ctrl-C)."""
        self._kill_all(sig)
        # Room for the workers' own drain (delay, period and the last closes) plus a margin.
        options = server_options(self.args)
        drain = (
            options.get("shutdown_timeout", WORKER_DRAIN)
            + options.get("drain_delay", BY_NAME["drain_delay"].default)
            + options.get("drain_period", BY_NAME["drain_period"].default)
        )
        graceful = max(GRACEFUL_TIMEOUT, drain + WORKER_DRAIN)
        deadline = time.monotonic() + graceful
        kill_deadline: float | None = None
        while self.workers:
            now = time.monotonic()
            if kill_deadline is None and (self._signals or now >= deadline):
                if self._signals:
                    log.warning("syncws: second signal, killing the workers now")
                else:
                    log.warning(
                        "syncws: worker%s %s did not stop within %g s; killing",
                        "s" if len(self.workers) > 1 else "",
                        ", ".join(map(str, self.workers)),
                        graceful,
                    )
                self._signals.clear()
                self._kill_all(signal.SIGKILL)
                kill_deadline = now + KILL_WAIT
            elif kill_deadline is not None and now >= kill_deadline:
                log.error("syncws: workers %s could not be reaped", ", ".join(map(str, self.workers)))
                break
            self._wait_for_events(0.1)
            for pid, _status in self._reap():
                self.workers.pop(pid, None)
        return code

    def _kill_all(self, sig: int) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    # -- children --------------------------------------------------------------------------
    def _spawn(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, (*_MASTER_SIGNALS, signal.SIGCHLD))
        try:
            pid = os.fork()
            if pid == 0:
                self._child()  # never returns
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.workers[pid] = _Worker(pid)

    def _child(self) -> None:
        code = 1
        try:
            # The master's handlers and wake-up pipe are not ours; signals are
            # blocked until the defaults are back, so none is lost or misrouted.
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, (*_MASTER_SIGNALS, signal.SIGCHLD))
            for fd in (self._wake_r, self._wake_w, self._ready_r):
                os.close(fd)
            code = run_worker(self.args, self.listener, self._ready_w, self.pid)
        except SystemExit as exc:  # e.g. sys.exit() while importing the app
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def _reap(self) -> list[Any]:
        ended = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            ended.append((pid, status))
            if getattr(self.args, "metrics", None):
                mark_metrics_dead(pid)
        return ended

    # -- signals and pipes -----------------------------------------------------------------
    def _install_signals(self) -> tuple[dict[int, Any], Any]:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._ready_r, self._ready_w = os.pipe()
        os.set_blocking(self._ready_r, False)
        previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in (*_MASTER_SIGNALS, signal.SIGCHLD)}
        wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in _MASTER_SIGNALS:
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only wakes the loop
        return previous, wakeup

    def _restore_signals(self, saved: tuple[dict[int, Any], Any]) -> None:
        previous, wakeup = saved
        signal.set_wakeup_fd(wakeup)
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _wait_for_events(self, timeout: float) -> None:
        if self._signals:
            return
        try:
            readable, _, _ = select.select([self._wake_r, self._ready_r], [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            return
        if self._wake_r in readable:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass

    def _read_ready(self) -> list[int]:
        try:
            while True:
                chunk = os.read(self._ready_r, 4096)
                if not chunk:
                    break
                self._ready_buffer += chunk
        except BlockingIOError:
            pass
        *lines, self._ready_buffer = self._ready_buffer.split(b"\n")
        return [int(line) for line in lines if line.strip().isdigit()]


# -- the worker side ---------------------------------------------------------------------------


def run_worker(args: argparse.Namespace, listener: socket.socket, ready_fd: int, master_pid: int) -> int:
    """Serve ``args.app`` on the inherited ``listener`` until the master's SIGTERM.

    Returns the process's exit status: 0 after a stop, 2 when the app or the
    options are unusable (the one-line error is printed here).
    """
    server = build_server(args, listener)
    if isinstance(server, int):
        return server
    import gevent

    server.start()
    pid = os.getpid()

    def on_sigterm() -> None:
        # Repeats are ignored: the master enforces its own deadline with SIGKILL.
        if not (server.stopping or server.draining):
            log.info("syncws: worker %d draining", pid)
        server.drain()  # the drain_delay, drain_period and shutdown_timeout options

    def on_sigint() -> None:
        # Ctrl-C (the terminal signals every process of the group) or the master's
        # SIGINT: close every peer with 1001 now, as a single process does.
        if not server.stopping:
            log.info("syncws: worker %d shutting down", pid)
            server.stop()

    def announce_ready() -> None:
        # From the hub, so the SIGTERM handler is in place by the time the master knows.
        try:
            os.write(ready_fd, b"%d\n" % pid)
        finally:
            os.close(ready_fd)

    def watch_master() -> None:
        while os.getppid() == master_pid:
            gevent.sleep(PARENT_CHECK_INTERVAL)
        log.warning("syncws: worker %d lost its master; shutting down", pid)
        server.stop()  # the shutdown_timeout option (WORKER_DRAIN by default)

    handlers = [gevent.signal_handler(signal.SIGTERM, on_sigterm), gevent.signal_handler(signal.SIGINT, on_sigint)]
    gevent.spawn(announce_ready)
    watcher = gevent.spawn(watch_master)
    try:
        server.serve_forever(handle_signals=False)
    finally:
        for handler in handlers:
            handler.cancel()
        watcher.kill(block=False)
    return 0


def run_master(args: argparse.Namespace, count: int) -> int:
    """Bind, fork ``count`` workers and supervise them; the CLI's exit status.

    With ``--metrics``, the workers share a prometheus_client multiprocess
    directory (``PROMETHEUS_MULTIPROC_DIR``, made here unless it is set), so
    a scrape answered by any worker counts every worker.
    """
    try:
        listener = bind_listener(args.host, args.port)
    except ListenError as exc:
        print(f"syncws: error: {exc}", file=sys.stderr)
        return 1
    args.port = listener.getsockname()[1]
    configure_logging("info", getattr(args, "log_format", "text"))
    made = None
    if getattr(args, "metrics", None) and not os.environ.get(MULTIPROC_ENV):
        made = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="syncws-metrics-")
    try:
        return Master(args, listener, count).run()
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
            os.environ.pop(MULTIPROC_ENV, None)


def mark_metrics_dead(pid: int) -> None:
    """A worker ended: its connection gauges no longer count (its counters still do)."""
    try:
        from prometheus_client import multiprocess
    except ImportError:  # the workers failed with a clear message already
        return
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
