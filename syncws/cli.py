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


# -- limits: flags, SYNCWS_* environment variables, Server options ----------------------

_NONE_WORDS = ("none", "off", "unlimited")
_SIZE_UNITS = {"": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2}


def _size(text: str, *, nullable: bool) -> Optional[int]:
    value = text.strip().lower()
    if nullable and value in _NONE_WORDS:
        return None
    number = value.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = value[len(number):].strip()
    try:
        size = int(number.strip()) * _SIZE_UNITS[unit]
    except (ValueError, KeyError):
        size = 0
    if size < 1:
        extra = ", or 'none'" if nullable else ""
        raise argparse.ArgumentTypeError(f"must be a positive size in bytes (e.g. 65536, 64KiB, 1MiB{extra}), got {text!r}")
    return size


def _seconds(text: str, *, nullable: bool) -> Optional[float]:
    value = text.strip().lower()
    if nullable and value in _NONE_WORDS:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        extra = ", or 'none'" if nullable else ""
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds{extra}, got {text!r}")
    return seconds


def _overflow(text: str) -> str:
    from .outbox import OVERFLOW_POLICIES

    value = text.strip().lower()
    if value not in OVERFLOW_POLICIES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(OVERFLOW_POLICIES)}, got {text!r}")
    return value


def _origins(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of origins or '*', got {text!r}")
    return items


def _threads(text: str) -> Any:
    value = text.strip().lower()
    if value in ("on", "true", "yes"):
        return True
    if value in ("off", "false", "no", "none", "0"):
        return False
    try:
        return _positive_int(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be 'on' (10 threads), 'off' or a positive number of threads, got {text!r}"
        ) from None


#: (option name, converter, metavar, help).  The flag is --option-name, the
#: environment variable SYNCWS_OPTION_NAME; the flag wins over the variable,
#: the variable over the built-in default (see ServerOptions).
LIMIT_OPTIONS: tuple = (
    ("max_message_size", lambda t: _size(t, nullable=True), "BYTES",
     "largest incoming WebSocket message, e.g. 1MiB, or 'none' (default 1MiB; over it: close 1009)"),
    ("max_buffer_size", lambda t: _size(t, nullable=True), "BYTES",
     "per-peer outbound buffer, or 'none' (default 1MiB)"),
    ("overflow", _overflow, "POLICY",
     "when a peer's outbound buffer is full: 'close' it with 1008, or 'drop' the message (default close)"),
    ("close_timeout", lambda t: _seconds(t, nullable=False), "SECONDS",
     "how long a closing peer has to answer our close frame (default 5)"),
    ("max_request_line", lambda t: _size(t, nullable=False), "BYTES",
     "longest HTTP request line (default 8192; over it: 414)"),
    ("max_header_size", lambda t: _size(t, nullable=False), "BYTES",
     "largest HTTP request header block (default 16KiB; over it: 431)"),
    ("max_header_count", _positive_int, "N",
     "most HTTP request header lines (default 100; over it: 431)"),
    ("handshake_timeout", lambda t: _seconds(t, nullable=True), "SECONDS",
     "time to receive a request line and headers, or 'none' (default 10; over it: 408 and close)"),
    ("ping_interval", lambda t: _seconds(t, nullable=True), "SECONDS",
     "ping a WebSocket peer after this much silence, or 'none' (default 20)"),
    ("ping_timeout", lambda t: _seconds(t, nullable=True), "SECONDS",
     "close a peer with 1011 when nothing answers a ping within this, or 'none' (default 20)"),
    ("allowed_origins", _origins, "ORIGINS",
     "comma-separated origins allowed to open WebSockets, e.g. https://example.com, or '*' "
     "(default: any; requests without an Origin header are always allowed; others get 403)"),
    ("shutdown_timeout", lambda t: _seconds(t, nullable=False), "SECONDS",
     "on SIGTERM/SIGINT, how long peers get to answer the 1001 close before exit (default 5)"),
    ("hooks_in_threads", _threads, "N",
     "run WebSocket hooks in a pool of N OS threads ('on': 10, 'off'), for hooks that block "
     "without yielding to gevent (un-patched I/O, C drivers) (default off)"),
)


def env_var(name: str) -> str:
    return "SYNCWS_" + name.upper()


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "limits", "each also read from the environment variable SYNCWS_<NAME> (e.g. SYNCWS_PING_INTERVAL)"
    )
    for name, convert, metavar, help_text in LIMIT_OPTIONS:
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=convert,
            default=argparse.SUPPRESS,  # absent: fall back to the environment, then the default
            metavar=metavar,
            help=help_text,
        )


def server_options(args: argparse.Namespace, environ: Optional[Any] = None) -> dict:
    """The limit options for :class:`~syncws.server.Server`: flags, else $SYNCWS_*.

    Raises ValueError with the message to print for a bad environment value.
    """
    environ = os.environ if environ is None else environ
    options: dict = {}
    for name, convert, _metavar, _help in LIMIT_OPTIONS:
        if hasattr(args, name):
            options[name] = getattr(args, name)
            continue
        text = environ.get(env_var(name), "").strip()
        if not text:
            continue
        try:
            options[name] = convert(text)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"{env_var(name)} {exc}") from None
    return options


# -- general options: flags, SYNCWS_* environment variables --------------------------------

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3000


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text!r}")
    return value


def _log_level(text: str) -> str:
    value = text.strip().lower()
    if value not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return value


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE_WORDS:
        return True
    if value in _FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"must be one of {'/'.join(_TRUE_WORDS + _FALSE_WORDS)}, got {text!r}")


#: (dest, environment variable, converter, default) of the options that take
#: their default from the environment: the flag wins over the variable, the
#: variable over the default.  (--broker and --workers: SYNCWS_BROKER and
#: SYNCWS_WORKERS, handled on their own.)
GENERAL_OPTIONS: tuple = (
    ("host", "SYNCWS_HOST", str, DEFAULT_HOST),
    ("port", "SYNCWS_PORT", _port, DEFAULT_PORT),
    ("log_level", "SYNCWS_LOG_LEVEL", _log_level, "info"),
    ("access_log", "SYNCWS_ACCESS_LOG", _boolean, True),
    ("reload", "SYNCWS_RELOAD", _boolean, False),
    ("no_monkey_patch", "SYNCWS_NO_MONKEY_PATCH", _boolean, False),
)


def resolve_general_options(args: argparse.Namespace, environ: Optional[Any] = None) -> None:
    """Fill in every general option left unset by a flag: $SYNCWS_*, else the default.

    Raises ValueError with the message to print for a bad environment value.
    """
    environ = os.environ if environ is None else environ
    for dest, variable, convert, default in GENERAL_OPTIONS:
        if getattr(args, dest, None) is not None:
            continue
        text = environ.get(variable, "").strip()
        if not text:
            setattr(args, dest, default)
            continue
        try:
            setattr(args, dest, convert(text))
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"{variable} {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .workers import GRACEFUL_TIMEOUT

    parser = argparse.ArgumentParser(
        prog="python -m syncws",
        description="Serve a WSGI app (syncws App, Flask, any callable) with WebSockets and SSE.",
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
    parser.add_argument(
        "--host", default=None, help=f"interface to bind (default: $SYNCWS_HOST, else {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=None,
        help=f"port to bind, 0 for any (default: $SYNCWS_PORT, else {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--log-level",
        type=_log_level,
        default=None,
        metavar="LEVEL",
        help=f"logging level: {', '.join(LOG_LEVELS)} (default: $SYNCWS_LOG_LEVEL, else info; "
        "the access log is logged at info)",
    )
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log one line per HTTP request to the 'syncws.access' logger "
        "(default: $SYNCWS_ACCESS_LOG, else on)",
    )
    parser.add_argument(
        "--reload",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="development: restart the server when a Python file of the app changes "
        "(werkzeug's stat reloader; the listening socket is kept across restarts; "
        "default: $SYNCWS_RELOAD, else off; not with --workers)",
    )
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
        action="store_const",
        const=True,
        default=None,
        help="do not gevent-monkey-patch the standard library (patched by default so blocking I/O "
        "in views and hooks yields to other connections; $SYNCWS_NO_MONKEY_PATCH=1 does the same)",
    )
    add_limit_arguments(parser)
    parser.add_argument("--version", action="version", version=f"syncws {__version__}")
    return parser


def configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), format="%(message)s")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        resolve_general_options(args)
        workers = _worker_count(args)
        server_options(args)  # a bad SYNCWS_* value fails here, before any fork
    except ValueError as exc:
        print(f"syncws: error: {exc}", file=sys.stderr)
        return 2
    if args.reload and workers > 1:
        print(
            "syncws: error: --reload restarts a single development server; it cannot be combined "
            f"with {workers} workers: drop --reload, or use --workers 1",
            file=sys.stderr,
        )
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

        configure_logging(args.log_level)
        return run_master(args, workers)
    if args.reload:
        from . import reloader

        if reloader.CHILD_FD_ENV in os.environ:
            return reloader.run_child(args, run_server)
        configure_logging(args.log_level)
        return reloader.run_parent(args)
    return run_server(args)


def build_server(args: argparse.Namespace, listener: Any = None) -> Any:
    """Patch (unless told not to), import the app and build its Server from ``args``.

    Shared by the single-process CLI, the reloader's child and ``--workers``
    children.  Returns the Server, or the exit status (2) after printing the
    one-line error for a bad import string or bad options.
    """
    if not args.no_monkey_patch:
        from gevent import monkey

        monkey.patch_all()
    try:
        app = load_app(args.app)
    except ImportStringError as exc:
        print(f"syncws: error: {exc}", file=sys.stderr, flush=True)
        return 2
    from .server import Server

    try:
        return Server(
            app,
            args.host,
            args.port,
            broker=args.broker,
            access_log=getattr(args, "access_log", True),
            listener=listener,
            **server_options(args),
        )
    except (ValueError, RuntimeError) as exc:
        print(f"syncws: error: {exc}", file=sys.stderr, flush=True)
        return 2


def run_server(
    args: argparse.Namespace,
    listener: Any = None,
    on_started: Optional[Callable[[Any], None]] = None,
    banner_suffix: str = "",
) -> int:
    """Serve ``args.app`` in this process until stopped; the CLI's exit status.

    ``listener``: an already-listening socket to accept on (the reloader's);
    ``on_started(server)`` runs in the hub once the server is serving.
    """
    configure_logging(args.log_level)
    server = build_server(args, listener)
    if isinstance(server, int):
        return server
    try:
        server.start()
    except OSError as exc:
        print(f"syncws: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    import gevent

    # Announce readiness from the hub, i.e. once serve_forever() has installed
    # its SIGTERM/SIGINT handlers: a supervisor that signals as soon as it sees
    # this line must get a clean shutdown, not the default "killed by signal".
    message = f"syncws: serving {args.app} on {server.url} (Ctrl-C to stop{banner_suffix})"
    gevent.spawn(print, message, flush=True)
    if on_started is not None:
        gevent.spawn(on_started, server)
    server.serve_forever()
    return 0
