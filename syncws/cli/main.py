"""``python -m syncws module:app``: serve any WSGI callable from the command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from ..base.errors import ConfigurationError
from ..base.options import BY_NAME, OPTIONS, Scope, unknown_variables, workers_need_a_broker
from ..base.version import __version__
from . import reloader
from .options import add_option, resolve_options, server_options
from .run import configure_logging, run_server
from .workers import GRACEFUL_TIMEOUT, run_master

EXAMPLE = "python -m syncws myapp:app --host 0.0.0.0 --port 8000 --workers 2 --broker redis://127.0.0.1:6379/0"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """The error and a hint, without argparse's whole usage text before it."""
        self.exit(2, f"syncws: error: {message}\nExample: {EXAMPLE}\nAll the options: python -m syncws --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m syncws",
        description=f"Serve a WSGI app (syncws App, Flask, any callable) with WebSockets and SSE.  Example: {EXAMPLE}",
        epilog="SIGTERM or Ctrl-C closes every WebSocket with 1001 (going away), ends every event "
        "stream and exits 0 once they are closed (at most --shutdown-timeout seconds; a second "
        "signal exits at once); "
        "with --workers, the master stops every worker that way (killing any still running after "
        f"{GRACEFUL_TIMEOUT:g} s, or at once on a second signal).  "
        "Environment: every option has a variable, SYNCWS_<OPTION> (SYNCWS_HOST, SYNCWS_PORT, "
        "SYNCWS_LOG_LEVEL, SYNCWS_ACCESS_LOG, SYNCWS_RELOAD, SYNCWS_NO_MONKEY_PATCH, SYNCWS_BROKER, "
        "SYNCWS_WORKERS, and SYNCWS_<LIMIT> for each limit below); a flag wins over its variable.  "
        "Boolean variables take 1/true/yes/on or 0/false/no/off.",
    )
    parser.add_argument("app", help="import string, 'module:app' or 'module' (uses its app/application)")
    general = parser.add_argument_group("server")
    limits = parser.add_argument_group(
        "limits", "each also read from the environment variable SYNCWS_<LIMIT> (e.g. SYNCWS_PING_INTERVAL)"
    )
    # The server's own options first (--host and --port at the top), then the limits.
    for option in sorted(OPTIONS, key=lambda o: o.scope is Scope.LIMIT):
        add_option(limits if option.scope is Scope.LIMIT else general, option)
    parser.add_argument("--version", action="version", version=f"syncws {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for warning in unknown_variables(os.environ):
        print(f"syncws: warning: {warning}", file=sys.stderr)
    workers_flag = "workers" in vars(args)
    try:
        resolve_options(args)
        server_options(args)  # a bad SYNCWS_* value fails here, before any fork
    except ConfigurationError as exc:
        print(f"syncws: error: {exc}", file=sys.stderr)
        return 2
    workers = args.workers
    if args.reload and workers > 1:
        print(
            "syncws: error: --reload restarts a single development server; it cannot be combined "
            f"with {workers} workers: drop --reload, or use --workers 1",
            file=sys.stderr,
        )
        return 2
    if workers > 1:
        if not args.broker:
            given = f"--workers {workers}" if workers_flag else f"{BY_NAME['workers'].env_var}={workers}"
            remedy = "pass --broker redis://HOST:6379/0 (or set SYNCWS_BROKER), or use --workers 1"
            print(f"syncws: error: {workers_need_a_broker(given, remedy)}", file=sys.stderr)
            return 2
        configure_logging(args.log_level, getattr(args, "log_format", "text"))
        return run_master(args, workers)
    if args.reload:
        if reloader.CHILD_FD_ENV in os.environ:
            return reloader.run_child(args, run_server)
        configure_logging(args.log_level, getattr(args, "log_format", "text"))
        return reloader.run_parent(args)
    return run_server(args)
