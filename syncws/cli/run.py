"""Running one server process from parsed command-line arguments.

Shared by the single-process CLI, the ``--reload`` child and the
``--workers`` children.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

import gevent

from ..base.errors import ImportStringError, ListenError, SyncwsError
from ..base.logs import make_handler
from ..server.server import Server
from .options import server_options


def load_app(spec: str) -> Callable[..., Any]:
    """Import ``module:attr`` (or ``module``, which must have ``app``/``application``)."""
    module_name, _, attr = spec.partition(":")

    def dotted(name: str) -> bool:
        return all(part.isidentifier() for part in name.split("."))

    if not dotted(module_name) or (":" in spec and not dotted(attr)):
        raise ImportStringError(f"expected 'module:app', got {spec!r}{_as_import_string(module_name, attr)}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            hint = _as_import_string(module_name, attr) if module_name.endswith(".py") else ""
            raise ImportStringError(f"cannot import module {module_name!r}: no such module{hint}") from None
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
        app: Callable[..., Any] = obj
        return app
    wanted = attr or "'app' or 'application'"
    raise ImportStringError(f"module {module_name!r} has no attribute {wanted}")


def _as_import_string(path: str, attr: str) -> str:
    """For a file path given where a module is expected: what to type instead."""
    stem = path.removesuffix(".py")
    module = ".".join(part for part in stem.replace(os.sep, "/").split("/") if part not in ("", "."))
    if module == path or not all(part.isidentifier() for part in module.split(".")):
        return ""
    return f": a module, not a file; type {module}:{attr or 'app'} (from the folder that holds {module.split('.')[0]})"


def configure_logging(level: str, log_format: str = "text") -> None:
    """The root logger at ``level``, to stderr, as text or one JSON object per line (``--log-format``)."""
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[make_handler(log_format, sys.stderr)])


def build_server(args: argparse.Namespace, listener: socket.socket | None = None) -> Server | int:
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
    try:
        return Server(
            app,
            args.host,
            args.port,
            broker=args.broker,
            certfile=getattr(args, "certfile", None),
            keyfile=getattr(args, "keyfile", None),
            metrics=getattr(args, "metrics", None),
            admin=getattr(args, "admin", None),
            admin_path=getattr(args, "admin_path", None),
            admin_key=getattr(args, "admin_key", None),
            log_format=getattr(args, "log_format", "text"),
            access_log=getattr(args, "access_log", True),
            listener=listener,
            **server_options(args),
        )
    except SyncwsError as exc:
        print(f"syncws: error: {exc}", file=sys.stderr, flush=True)
        return 2


def run_server(
    args: argparse.Namespace,
    listener: socket.socket | None = None,
    on_started: Callable[[Server], None] | None = None,
    banner_suffix: str = "",
) -> int:
    """Serve ``args.app`` in this process until stopped; the CLI's exit status.

    ``listener``: an already-listening socket to accept on (the reloader's);
    ``on_started(server)`` runs in the hub once the server is serving.
    """
    configure_logging(args.log_level, getattr(args, "log_format", "text"))
    server = build_server(args, listener)
    if isinstance(server, int):
        return server
    try:
        server.start()
    except ListenError as exc:
        print(f"syncws: error: {exc}", file=sys.stderr)
        return 1

    # Announce readiness from the hub, i.e. once serve_forever() has installed
    # its SIGTERM/SIGINT handlers: a supervisor that signals as soon as it sees
    # this line must get a clean shutdown, not the default "killed by signal".
    message = f"syncws: serving {args.app} on {server.url} (Ctrl-C to stop{banner_suffix})"
    gevent.spawn(print, message, flush=True)
    if on_started is not None:
        gevent.spawn(on_started, server)
    server.serve_forever()
    return 0
