"""``python -m syncws module:app``: serve any WSGI callable from the command line."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any, Callable, Optional, Sequence


class ImportStringError(Exception):
    """The ``module:app`` string does not name a WSGI callable."""


def load_app(spec: str) -> Callable[..., Any]:
    """Import ``module:attr`` (or ``module``, which must have ``app``/``application``)."""
    module_name, _, attr = spec.partition(":")
    def dotted(name: str) -> bool:
        return all(part.isidentifier() for part in name.split("."))

    if not dotted(module_name) or (":" in spec and not dotted(attr)):
        raise ImportStringError(f"expected 'module:app', got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ImportStringError(f"cannot import module {module_name!r}: no such module") from None
        raise
    names = [attr] if attr else ["app", "application"]
    for name in names:
        obj: Any = module
        try:
            for part in name.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if not callable(obj):
            raise ImportStringError(f"{module_name}:{name} is not a WSGI callable ({type(obj).__name__})")
        return obj
    wanted = attr or "'app' or 'application'"
    raise ImportStringError(f"module {module_name!r} has no attribute {wanted}")


WORKERS_ENV_VAR = "SYNCWS_WORKERS"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _worker_count(args: argparse.Namespace) -> int:
    """--workers, else $SYNCWS_WORKERS, else 1; ValueError with the message to print."""
    if args.workers is not None:
        return args.workers
    text = os.environ.get(WORKERS_ENV_VAR, "").strip()
    if not text:
        return 1
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"{WORKERS_ENV_VAR} {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .workers import GRACEFUL_TIMEOUT

    parser = argparse.ArgumentParser(
        prog="python -m syncws",
        description="Serve a WSGI app (syncws App, Flask, any callable) with WebSockets and SSE.",
        epilog="SIGTERM or Ctrl-C closes every WebSocket with 1001 (going away) and exits 0; "
        "with --workers, the master stops every worker that way (killing any still running after "
        f"{GRACEFUL_TIMEOUT:g} s, or at once on a second signal).  "
        "Environment: SYNCWS_BROKER (default for --broker), SYNCWS_WORKERS (default for --workers).",
    )
    parser.add_argument("app", help="import string, 'module:app' or 'module' (uses its app/application)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=3000, help="port to bind, 0 for any (default 3000)")
    parser.add_argument(
        "--broker",
        default=os.environ.get("SYNCWS_BROKER") or None,
        help="pub/sub broker URL shared by every process, e.g. redis://localhost:6379/0 "
        "(default: $SYNCWS_BROKER, else in-process pub/sub)",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        metavar="N",
        help="worker processes sharing the listening port (default: $SYNCWS_WORKERS, else 1).  "
        "More than 1 needs --broker, so that a publish reaches the clients of every worker; "
        "a worker that dies is replaced",
    )
    parser.add_argument(
        "--no-monkey-patch",
        action="store_true",
        help="do not gevent-monkey-patch the standard library (patched by default so blocking I/O "
        "in views and hooks yields to other connections)",
    )
    parser.add_argument("--version", action="version", version=f"syncws {__version__}")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        workers = _worker_count(args)
    except ValueError as exc:
        print(f"syncws: error: {exc}", file=sys.stderr)
        return 2
    if workers > 1:
        if not args.broker:
            given = f"--workers {workers}" if args.workers is not None else f"{WORKERS_ENV_VAR}={workers}"
            print(
                f"syncws: error: {given} needs a broker: with in-memory pub/sub each worker would "
                "have its own subscribers, so a publish would reach only the clients of one worker; "
                "pass --broker redis://HOST:6379/0 (or set SYNCWS_BROKER), or use --workers 1",
                file=sys.stderr,
            )
            return 2
        from .workers import run_master

        return run_master(args, workers)
    if not args.no_monkey_patch:
        from gevent import monkey

        monkey.patch_all()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        app = load_app(args.app)
    except ImportStringError as exc:
        print(f"syncws: error: {exc}", file=sys.stderr)
        return 2
    from .server import Server

    try:
        server = Server(app, args.host, args.port, broker=args.broker)
    except (ValueError, RuntimeError) as exc:
        print(f"syncws: error: {exc}", file=sys.stderr)
        return 2
    try:
        server.start()
    except OSError as exc:
        print(f"syncws: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    import gevent

    # Announce readiness from the hub, i.e. once serve_forever() has installed
    # its SIGTERM/SIGINT handlers: a supervisor that signals as soon as it sees
    # this line must get a clean shutdown, not the default "killed by signal".
    message = f"syncws: serving {args.app} on {server.url} (Ctrl-C to stop)"
    gevent.spawn(print, message, flush=True)
    server.serve_forever()
    return 0
