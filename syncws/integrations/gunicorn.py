"""A gunicorn worker class that serves an app with the syncws server.

::

    gunicorn -k syncws.gunicorn.Worker -b 127.0.0.1:8000 app:app
    SYNCWS_BROKER=redis://127.0.0.1:6379/0 gunicorn -k syncws.gunicorn.Worker -w 4 app:app

Each gunicorn worker process monkey-patches with gevent (as gunicorn's own
gevent worker does, before the app is loaded), then runs one
:class:`~syncws.server.Server` on the sockets gunicorn bound, so WebSockets,
Server-Sent Events, pub/sub, the limits and the graceful shutdown behave
exactly as under ``python -m syncws``:

* **Timeout.**  gunicorn's ``--timeout`` is a worker heartbeat: the arbiter
  kills a worker that has not checked in for that long.  This worker checks
  in from its own greenlet several times per ``--timeout``, whatever its
  connections are doing, so a WebSocket or an event stream may stay open for
  hours.  (A worker whose hub is blocked, e.g. by an un-patched blocking
  call, still gets killed: that is what the timeout is for.)
* **Pub/sub across workers** needs a broker, as with ``--workers``: the
  ``SYNCWS_BROKER`` environment variable (``redis://host:port/db``), which
  may also be given as ``gunicorn -e SYNCWS_BROKER=...`` or ``raw_env`` in a
  gunicorn config file.  With ``-w`` above 1 and no broker the worker refuses
  to boot (gunicorn stops), saying so, as ``--workers`` does: a publish would
  reach only the clients of the worker it was made on.
* **Graceful shutdown.**  On SIGTERM (``gunicorn``'s graceful stop, also
  used for ``HUP`` reloads and ``TTOU``) the worker stops accepting, closes
  every WebSocket with 1001 (going away), ends every event stream and exits
  once they are closed, at most ``SYNCWS_SHUTDOWN_TIMEOUT`` seconds (5 by
  default, capped at gunicorn's ``--graceful-timeout``).  On SIGINT/SIGQUIT
  (gunicorn's quick stop, Ctrl-C) it sends the 1001 closes and exits at once.
* **Limits** come from the ``SYNCWS_<LIMIT>`` environment variables, as for
  ``python -m syncws`` (``SYNCWS_MAX_MESSAGE_SIZE``, ``SYNCWS_PING_INTERVAL``,
  ...).
* **Logging** goes to gunicorn's logs: syncws messages to the error log, one
  line per request to the access log when ``--access-logfile`` is given.

* **Metrics**: ``SYNCWS_METRICS=host:port``; with more than one worker,
  ``PROMETHEUS_MULTIPROC_DIR`` must name an empty directory (and a
  ``child_exit`` hook should call ``mark_process_dead``: docs/operations.md).
* **TLS**: gunicorn's ``--certfile``/``--keyfile`` (and its other TLS
  settings, through gunicorn's own ``ssl_context``) serve ``https://`` and
  ``wss://``; the TLS handshake is bounded by ``SYNCWS_HANDSHAKE_TIMEOUT``.

Not supported: ``--worker-connections`` and ``--max-requests``.
With ``--preload`` the app is imported in the arbiter, before any monkey
patching: avoid it, as with gunicorn's gevent worker.
"""

from __future__ import annotations

import logging
import os
import socket as stdlib_socket
import sys
from types import FrameType
from typing import Any

import gevent
from gevent import hub, monkey
from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker as BaseWorker

from ..base.errors import ConfigurationError
from ..base.logs import make_handler
from ..base.options import BY_NAME, LIMITS, from_environ, unknown_variables, workers_need_a_broker
from ..server.listener import url_for
from ..server.server import Server
from .metrics import MULTIPROC_ENV

log = logging.getLogger("syncws")

#: How often, at most, the worker checks in with the arbiter and looks at its state.
TICK = 0.5
#: Extra time given to the server to finish after its shutdown timeout.
FINISH_MARGIN = 1.0


class Worker(BaseWorker):
    """``gunicorn -k syncws.gunicorn.Worker``: one syncws server per worker process."""

    server: Server | None = None
    sockets: list[Any]
    metrics_address: str | None = None

    # -- process set-up (in the worker, after the fork) -----------------------------
    def init_process(self) -> None:
        try:
            self._check_broker()
            self.metrics_address = self._metrics_address()
        except ConfigurationError as exc:
            # Exit status 3 tells gunicorn's arbiter that the worker cannot boot: it stops,
            # rather than starting replacements that would fail the same way.
            self.log.error("syncws: %s", exc)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        monkey.patch_all()
        from gevent import socket

        # gunicorn's listeners as gevent sockets (as gunicorn's gevent worker does).
        self.sockets = [
            socket.socket(s.FAMILY, stdlib_socket.SOCK_STREAM, fileno=s.sock.detach()) for s in self.sockets
        ]
        hub.reinit()
        super().init_process()  # loads the app (self.wsgi), installs signals, calls run()

    def _route_logs(self) -> None:
        """syncws's loggers write to gunicorn's error and access logs; with SYNCWS_LOG_FORMAT=json, JSON to stderr."""
        if from_environ(os.environ, {"log_format"}).get("log_format") == "json":
            for logger in (log, logging.getLogger("syncws.access")):
                if not logger.handlers:
                    logger.addHandler(make_handler("json", sys.stderr))
                    logger.setLevel(logging.INFO)
                    logger.propagate = False
            return
        error_log = getattr(self.log, "error_log", None)
        if isinstance(error_log, logging.Logger) and not log.handlers:
            for handler in error_log.handlers:
                log.addHandler(handler)
            log.setLevel(error_log.level or logging.INFO)
            log.propagate = False
        access = logging.getLogger("syncws.access")
        access_log = getattr(self.log, "access_log", None)
        access.propagate = False  # never into the error log
        if isinstance(access_log, logging.Logger) and not access.handlers:
            for handler in access_log.handlers:
                access.addHandler(handler)
            access.setLevel(logging.INFO)

    def _server_options(self) -> dict[str, Any]:
        options = from_environ(os.environ, {option.name for option in LIMITS})  # SYNCWS_<LIMIT> variables
        graceful = float(self.cfg.graceful_timeout)
        # Leave the arbiter's SIGKILL (after --graceful-timeout) out of the drain: the
        # delay, the period and the last closes fit in it, the period giving way first.
        budget = max(0.0, graceful - FINISH_MARGIN)
        shutdown = options["shutdown_timeout"] = max(0.0, min(options.get("shutdown_timeout", 5.0), budget))
        delay = options["drain_delay"] = min(options.get("drain_delay", BY_NAME["drain_delay"].default), budget)
        period = options.get("drain_period", BY_NAME["drain_period"].default)
        options["drain_period"] = max(0.0, min(period, budget - shutdown - delay))
        return options

    # -- the main loop --------------------------------------------------------------------
    def run(self) -> None:
        self._route_logs()
        for warning in unknown_variables(os.environ):
            log.warning("syncws: %s", warning)
        first, *others = self.sockets
        address = first.getsockname()
        host, port = (address[0], address[1]) if isinstance(address, tuple) else ("127.0.0.1", 0)
        for sock in self.sockets:
            sock.setblocking(True)
        server = Server(  # its broker: SYNCWS_BROKER, else in-process
            self.wsgi,
            host,
            port,
            listener=first,
            access_log=bool(self.cfg.accesslog),
            ssl_context=self._ssl_context(),
            metrics=self.metrics_address,
            **from_environ(os.environ, {"admin", "admin_path", "admin_key", "log_format"}),  # SYNCWS_ADMIN...
            **self._server_options(),
        )
        self.server = server
        server.start()
        # More than one -b: the same server (registry, sessions, drain) accepts on each.
        for sock in others:
            server.add_listener(sock)
        log.info("syncws: worker %d serving on %s", self.pid, ", ".join(self._describe(s) for s in self.sockets))

        try:
            # The heartbeat: gunicorn's --timeout never applies to long-lived connections.
            tick = max(0.05, min(TICK, float(self.timeout) / 4)) if self.timeout else TICK
            while self.alive and not server.finished:
                self.notify()
                if self.ppid != os.getppid():
                    log.info("syncws: worker %d lost its arbiter; shutting down", self.pid)
                    break
                gevent.sleep(tick)
            if not (server.stopping or server.draining):
                log.info("syncws: worker %d draining", self.pid)
            server.drain()  # not ready, then 1012 to every peer spread over drain_period (docs/operations.md)
            options = server.options
            deadline = options.drain_delay + options.drain_period + options.shutdown_timeout + FINISH_MARGIN
            with gevent.Timeout(deadline, False):  # False: expire quietly
                while not server.finished:
                    self.notify()
                    gevent.sleep(min(tick, 0.1))
        finally:
            server.finish()

    def _check_broker(self) -> None:
        """More than one worker needs ``SYNCWS_BROKER``, as ``--workers`` needs ``--broker``."""
        workers = self.cfg.workers
        if workers > 1 and not from_environ(os.environ, {"broker"}).get("broker"):
            raise ConfigurationError(
                workers_need_a_broker(
                    f"gunicorn -w {workers}",
                    "set SYNCWS_BROKER=redis://HOST:6379/0 in the environment (or raw_env in a gunicorn "
                    "config file), or use -w 1",
                )
            )

    def _metrics_address(self) -> str | None:
        """``SYNCWS_METRICS``; with several workers, prometheus_client's multiprocess directory is required."""
        address: str | None = from_environ(os.environ, {"metrics"}).get("metrics")
        if address and self.cfg.workers > 1 and not os.environ.get(MULTIPROC_ENV):
            raise ConfigurationError(
                f"SYNCWS_METRICS with {self.cfg.workers} gunicorn workers needs {MULTIPROC_ENV} set to an empty "
                "directory, so that every worker's figures reach the scrape (docs/operations.md)"
            )
        return address

    def _ssl_context(self) -> Any:
        """gunicorn's TLS settings as a context (built after monkey-patching: gevent's ``ssl``)."""
        if not self.cfg.is_ssl:
            return None
        from gunicorn.sock import ssl_context

        return ssl_context(self.cfg)

    def _describe(self, sock: Any) -> str:
        address = sock.getsockname()
        if isinstance(address, tuple):
            return url_for(address[0], address[1], self.cfg.is_ssl)
        return f"unix:{address}"

    # -- signals ----------------------------------------------------------------------------
    def handle_quit(self, sig: int, frame: FrameType | None) -> None:
        # gunicorn's quick stop (SIGINT, SIGQUIT): goodbye frames, then exit at once.
        # Out of the signal handler, as gunicorn's gevent worker does (blocking calls).
        self.alive = False
        gevent.spawn(self._quit, sig, frame)

    def _quit(self, sig: int, frame: FrameType | None) -> None:
        server = self.server
        if server is not None and not server.finished:
            try:
                server.close_all(1001, "going away")
                gevent.sleep(0.1)  # let the close frames go out
            except Exception:  # pragma: no cover - best effort
                log.exception("syncws: error while closing peers")
        BaseWorker.handle_quit(self, sig, frame)

    def handle_usr1(self, sig: int, frame: FrameType | None) -> None:
        gevent.spawn(BaseWorker.handle_usr1, self, sig, frame)


__all__ = ["Worker"]
