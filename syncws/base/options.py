"""The option table: every setting of syncws, described once.

Each :class:`Option` row gives a setting's name, default, kind (which says how
text from a flag or an environment variable is parsed and how a Python value
is checked), where it applies and a one-line help.  Everything else is derived
from :data:`OPTIONS`:

* :class:`ServerOptions`, the validated settings a running server reads;
* the ``python -m syncws`` flags (``--max-message-size``) and their help;
* the ``SYNCWS_*`` environment variables (``SYNCWS_MAX_MESSAGE_SIZE``), read
  by the CLI, ``--workers`` children and the gunicorn worker alike;
* the per-handler overrides of ``define_websocket_handler`` (rows with
  ``per_handler=True``);
* the options table of ``docs/reference/options.md`` (a test fails when the
  page and this table disagree).

Precedence: a flag wins over its variable, a variable over the default; a
keyword given to ``serve()``/``Server()`` is taken as it is.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import ConfigurationError

log = logging.getLogger("syncws")

MiB = 1024 * 1024

#: What ``allowed_origins`` becomes once normalised: None (no check), a
#: callable(origin) -> bool, or a frozenset of lower-cased origins ("*": any).
OriginPolicy = Callable[[str], object] | frozenset[str] | None

OVERFLOW_POLICIES = ("close", "drop")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
THREAD_MODES = ("auto", "on", "off")

_NONE_WORDS = ("none", "off", "unlimited")
_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off")
_SIZE_UNITS = {"": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": MiB, "mb": MiB, "mib": MiB}


class Kind(enum.Enum):
    """How an option's text is parsed and its value checked."""

    SIZE = "size"  # bytes: 65536, 64KiB, 1MiB
    COUNT = "count"  # a positive integer
    AMOUNT = "amount"  # a non-negative integer (0 turns the feature off)
    SECONDS = "seconds"  # a positive, finite number
    DELAY = "delay"  # a non-negative, finite number of seconds (0: at once)
    CHOICE = "choice"  # one of ``choices``
    ORIGINS = "origins"  # comma-separated origins, '*', or (in Python) a callable
    SWITCH = "switch"  # auto, on or off (True and False in Python)
    BOOL = "bool"  # 1/true/yes/on or 0/false/no/off
    FLAG = "flag"  # a flag without a value (true when given)
    TEXT = "text"  # any non-empty string
    PORT = "port"  # 0 to 65535
    WINDOW_BITS = "window bits"  # a deflate window: 9 to 15 (512 B to 32 KiB)
    NETWORKS = "networks"  # comma-separated IP addresses or networks
    RATE = "rate"  # a rate per second and a burst: 50/100 (a burst of the rate when left out)


class Scope(enum.Enum):
    """Where an option is given."""

    LIMIT = "limit"  # a keyword of serve()/Server(), a field of ServerOptions
    SERVER = "server"  # an argument of serve()/Server() kept on the Server itself
    CLI = "cli"  # the command line (and its variable) only


@dataclass(frozen=True)
class Option:
    """One row of the option table."""

    name: str
    kind: Kind
    default: Any
    help: str
    scope: Scope = Scope.LIMIT
    nullable: bool = False  # None (``none`` on the command line) disables it
    per_handler: bool = False  # define_websocket_handler(..., name=...) overrides it
    choices: tuple[str, ...] = ()
    metavar: str = ""
    shown_default: str = ""  # the default as the docs show it, when repr() is not right

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_var(self) -> str:
        return "SYNCWS_" + self.name.upper()

    @property
    def default_text(self) -> str:
        return self.shown_default or repr(self.default)

    # -- text (a flag or an environment variable) ---------------------------------
    def parse(self, text: str) -> object:
        """The value of a flag or variable; ConfigurationError saying what was expected."""
        value = text.strip()
        lower = value.lower()
        if self.nullable and lower in _NONE_WORDS:
            return None
        parser = _PARSERS[self.kind]
        try:
            result = parser(self, value)
        except ConfigurationError:
            raise
        except (ValueError, KeyError, OverflowError):
            result = _INVALID
        if result is _INVALID:
            extra = ", or 'none'" if self.nullable else ""
            raise ConfigurationError(f"must be {self.expected}{extra}, got {text!r}")
        return result

    @property
    def expected(self) -> str:
        """What a valid value looks like, for error messages."""
        return _EXPECTED[self.kind].format(choices=", ".join(self.choices))

    # -- Python values -------------------------------------------------------------
    def validate(self, value: object) -> Any:
        """Check a Python value; return it normalised.  ConfigurationError if unusable."""
        if value is None and self.nullable:
            return None
        kind = self.kind
        if kind in (Kind.SIZE, Kind.COUNT):
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        elif kind is Kind.AMOUNT:
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        elif kind is Kind.SECONDS:
            if is_seconds(value):
                return value
        elif kind is Kind.DELAY:
            if value == 0 or is_seconds(value):
                return value
        elif kind is Kind.CHOICE:
            if value in self.choices:
                return value
        elif kind is Kind.ORIGINS:
            return normalize_origins(value)
        elif kind is Kind.SWITCH:
            if isinstance(value, bool):
                return "on" if value else "off"
            if isinstance(value, str) and value.lower() in THREAD_MODES:
                return value.lower()
        elif kind in (Kind.BOOL, Kind.FLAG):
            return bool(value)
        elif kind is Kind.TEXT:
            if isinstance(value, str) and value:
                return value
        elif kind is Kind.PORT:
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535:
                return value
        elif kind is Kind.WINDOW_BITS:
            if isinstance(value, int) and not isinstance(value, bool) and 9 <= value <= 15:
                return value
        elif kind is Kind.NETWORKS:
            networks = _networks(value)
            if networks is not None:
                return networks
        elif kind is Kind.RATE:
            rate = _rate(value)
            if rate is not None:
                return rate
        none = " or None" if self.nullable else ""
        raise ConfigurationError(f"{self.name} must be {self.expected}{none}, not {value!r}")


_INVALID: Any = object()


def is_seconds(value: object) -> bool:
    """A positive, finite number of seconds (``0 < value < inf`` also refuses NaN, which never expires)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def _parse_size(option: Option, text: str) -> object:
    lower = text.lower()
    number = lower.rstrip("abcdefghijklmnopqrstuvwxyz")
    size = int(number.strip()) * _SIZE_UNITS[lower[len(number) :].strip()]
    return size if size >= 1 else _INVALID


def _parse_count(option: Option, text: str) -> object:
    value = int(text)
    return value if value >= 1 else _INVALID


def _parse_amount(option: Option, text: str) -> object:
    value = int(text)
    return value if value >= 0 else _INVALID


def _parse_seconds(option: Option, text: str) -> object:
    value = float(text)
    return value if 0 < value < math.inf else _INVALID


def _parse_delay(option: Option, text: str) -> object:
    value = float(text)
    return value if 0 <= value < math.inf else _INVALID


def _parse_choice(option: Option, text: str) -> object:
    lower = text.lower()
    return lower if lower in option.choices else _INVALID


def _parse_origins(option: Option, text: str) -> object:
    items = [item.strip() for item in text.split(",") if item.strip()]
    return items if items else _INVALID


def _parse_switch(option: Option, text: str) -> object:
    lower = text.lower()
    if lower == "auto":
        return lower
    if lower in _TRUE_WORDS:
        return "on"
    if lower in _FALSE_WORDS:
        return "off"
    return _INVALID


def _parse_bool(option: Option, text: str) -> object:
    lower = text.lower()
    if lower in _TRUE_WORDS:
        return True
    if lower in _FALSE_WORDS:
        return False
    return _INVALID


def _parse_text(option: Option, text: str) -> object:
    return text if text else _INVALID


def _parse_port(option: Option, text: str) -> object:
    value = int(text)
    return value if 0 <= value <= 65535 else _INVALID


def _parse_window_bits(option: Option, text: str) -> object:
    value = int(text)
    return value if 9 <= value <= 15 else _INVALID


def _parse_networks(option: Option, text: str) -> object:
    networks = _networks([item for item in text.split(",") if item.strip()])
    return networks if networks is not None else _INVALID


def _networks(value: object) -> tuple[Any, ...] | None:
    """A tuple of ``ipaddress`` networks from a list of addresses/networks (or one), None if unusable."""
    items = [value] if isinstance(value, (str, ipaddress.IPv4Network, ipaddress.IPv6Network)) else value
    kinds = (str, ipaddress.IPv4Network, ipaddress.IPv6Network)
    try:
        items = list(items) if isinstance(items, Iterable) else []
        if not items or not all(isinstance(item, kinds) for item in items):
            return None
        return tuple(
            ipaddress.ip_network(item.strip() if isinstance(item, str) else item, strict=False) for item in items
        )
    except (TypeError, ValueError):
        return None


def _parse_rate(option: Option, text: str) -> object:
    parts = text.split("/")
    if len(parts) > 2:
        return _INVALID
    numbers: list[object] = []
    for part in parts:
        try:
            numbers.append(float(part))
        except ValueError:
            numbers.append(_parse_size(option, part))
    rate = _rate(tuple(numbers) if len(numbers) == 2 else numbers[0])
    return rate if rate is not None else _INVALID


def _rate(value: object) -> tuple[float, float] | None:
    """``(per second, burst)`` from a positive number or a pair of them; None if unusable."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        return None
    rate, burst = value
    if not (is_seconds(rate) and is_seconds(burst)):  # positive and finite, like a number of seconds
        return None
    return float(rate), float(burst)


_PARSERS: dict[Kind, Callable[[Option, str], object]] = {
    Kind.SIZE: _parse_size,
    Kind.COUNT: _parse_count,
    Kind.AMOUNT: _parse_amount,
    Kind.SECONDS: _parse_seconds,
    Kind.DELAY: _parse_delay,
    Kind.CHOICE: _parse_choice,
    Kind.ORIGINS: _parse_origins,
    Kind.SWITCH: _parse_switch,
    Kind.BOOL: _parse_bool,
    Kind.FLAG: _parse_bool,
    Kind.TEXT: _parse_text,
    Kind.PORT: _parse_port,
    Kind.WINDOW_BITS: _parse_window_bits,
    Kind.NETWORKS: _parse_networks,
    Kind.RATE: _parse_rate,
}

_EXPECTED = {
    Kind.SIZE: "a positive size in bytes (e.g. 65536, 64KiB, 1MiB)",
    Kind.COUNT: "a positive integer",
    Kind.AMOUNT: "a non-negative integer",
    Kind.SECONDS: "a positive number of seconds",
    Kind.DELAY: "a number of seconds, 0 or more",
    Kind.CHOICE: "one of {choices}",
    Kind.ORIGINS: "a comma-separated list of origins or '*'",
    Kind.SWITCH: "'auto', 'on' or 'off' (True or False in Python)",
    Kind.BOOL: "one of " + "/".join(_TRUE_WORDS + _FALSE_WORDS),
    Kind.FLAG: "one of " + "/".join(_TRUE_WORDS + _FALSE_WORDS),
    Kind.TEXT: "a non-empty string",
    Kind.PORT: "a port number from 0 to 65535",
    Kind.WINDOW_BITS: "an integer from 9 to 15",
    Kind.NETWORKS: "a comma-separated list of IP addresses or networks (10.0.0.0/8)",
    Kind.RATE: "a positive rate per second, and optionally /burst (50/100)",
}

_METAVARS = {
    Kind.SIZE: "BYTES",
    Kind.COUNT: "N",
    Kind.AMOUNT: "N",
    Kind.SECONDS: "SECONDS",
    Kind.DELAY: "SECONDS",
    Kind.ORIGINS: "ORIGINS",
    Kind.SWITCH: "MODE",
}


def normalize_origins(value: object) -> OriginPolicy:
    """None, a callable, or a frozenset of lower-cased origins ("*" allows any)."""
    if value is None:
        return None
    if callable(value):
        return value
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Iterable):
        raise ConfigurationError(
            f"allowed_origins must be None, a list of origins or a callable, not {type(value).__name__}"
        )
    origins = set()
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ConfigurationError(f"allowed_origins entries must be non-empty strings, not {item!r}")
        origins.add(item.strip().rstrip("/").lower())
    return frozenset(origins)


def origin_allowed(policy: OriginPolicy, origin: str | None) -> bool:
    """Whether a WebSocket upgrade with this ``Origin`` header may proceed.

    No policy, or no ``Origin`` header at all, passes: browsers always send
    one on a WebSocket handshake, so a request without it comes from a
    non-browser client (a script, a server, a CLI tool) that could forge any
    Origin anyway; the check exists to stop *other web sites* from opening
    sockets with a visitor's cookies (cross-site WebSocket hijacking).
    A list matches the serialised origin (``scheme://host[:port]``) exactly,
    case-insensitively; ``"*"`` matches anything.  A callable that raises
    rejects (fail closed) and the exception is logged.
    """
    if policy is None or origin is None:
        return True
    if callable(policy):
        try:
            return bool(policy(origin))
        except Exception:
            log.exception("syncws: allowed_origins callable raised for Origin %r; rejecting", origin)
            return False
    return "*" in policy or origin.strip().rstrip("/").lower() in policy


# -- the table ---------------------------------------------------------------------------

OPTIONS: tuple[Option, ...] = (
    # WebSocket messages and buffers
    Option(
        "max_message_size",
        Kind.SIZE,
        MiB,
        nullable=True,
        per_handler=True,
        shown_default="1 MiB",
        help="largest incoming WebSocket message; over it the peer is closed with 1009",
    ),
    Option(
        "max_buffer_size",
        Kind.SIZE,
        MiB,
        nullable=True,
        shown_default="1 MiB",
        help="bytes queued for one peer or event stream and not yet written; over it the overflow policy applies",
    ),
    Option(
        "overflow",
        Kind.CHOICE,
        "close",
        choices=OVERFLOW_POLICIES,
        metavar="POLICY",
        help="a full outbound buffer: 'close' the peer with 1008 (an event stream ends), or 'drop' the new message",
    ),
    Option(
        "compression",
        Kind.CHOICE,
        None,
        choices=("deflate",),
        nullable=True,
        per_handler=True,
        metavar="deflate",
        shown_default="None",
        help="'deflate': accept permessage-deflate (RFC 7692) when the client offers it; costs memory per "
        "connection that sends compressed messages (docs/compression.md)",
    ),
    Option(
        "compression_threshold",
        Kind.SIZE,
        128,
        shown_default="128 bytes",
        help="on a compressing connection, messages smaller than this go uncompressed unless sent with compress=True",
    ),
    Option(
        "compression_window_bits",
        Kind.WINDOW_BITS,
        12,
        metavar="BITS",
        shown_default="12 (4 KiB)",
        help="the largest deflate window the server compresses with and asks clients to use when they let it "
        "choose; smaller saves memory, larger compresses better",
    ),
    Option(
        "close_timeout",
        Kind.SECONDS,
        5.0,
        shown_default="5 s",
        help="how long a closing peer has to answer our close frame before the connection is dropped",
    ),
    # The HTTP request head (every request, upgrades included)
    Option(
        "max_request_line",
        Kind.SIZE,
        8192,
        shown_default="8192 bytes",
        help="longest HTTP request line; over it: 414 and close",
    ),
    Option(
        "max_header_size",
        Kind.SIZE,
        16 * 1024,
        shown_default="16 KiB",
        help="largest HTTP request header block; over it: 431 and close",
    ),
    Option("max_header_count", Kind.COUNT, 100, help="most HTTP request header lines; over it: 431 and close"),
    Option(
        "handshake_timeout",
        Kind.SECONDS,
        10.0,
        nullable=True,
        shown_default="10 s",
        help="time to receive a request line and headers; over it: 408 and close",
    ),
    # Keepalive
    Option(
        "ping_interval",
        Kind.SECONDS,
        20.0,
        nullable=True,
        per_handler=True,
        shown_default="20 s",
        help="ping a WebSocket peer after this much silence",
    ),
    Option(
        "ping_timeout",
        Kind.SECONDS,
        20.0,
        nullable=True,
        per_handler=True,
        shown_default="20 s",
        help="close a peer with 1011 when nothing answers a ping within this; None: never time out",
    ),
    # Who may connect
    Option(
        "allowed_origins",
        Kind.ORIGINS,
        None,
        nullable=True,
        per_handler=True,
        shown_default="None (any)",
        help="origins allowed to open WebSockets ('*': any; a callable in Python); others get 403; "
        "requests without an Origin header always pass",
    ),
    # Guardrails (docs/operations.md)
    Option(
        "max_connections",
        Kind.COUNT,
        None,
        nullable=True,
        shown_default="None (no cap)",
        help="WebSocket peers plus event streams on one server process; over it a new upgrade or stream gets "
        "503 with Retry-After (plain HTTP requests are not counted)",
    ),
    Option(
        "max_connections_per_ip",
        Kind.COUNT,
        None,
        nullable=True,
        shown_default="None (no cap)",
        help="WebSocket peers plus event streams from one client address; over it: 429",
    ),
    Option(
        "trusted_proxies",
        Kind.NETWORKS,
        None,
        nullable=True,
        metavar="NETWORKS",
        shown_default="None",
        help="proxies (addresses or networks) whose forwarded_header gives the client address "
        "(peer.remote_address, the per-IP cap); the header is ignored from anyone else",
    ),
    Option(
        "forwarded_header",
        Kind.CHOICE,
        "x-forwarded-for",
        choices=("x-forwarded-for", "forwarded"),
        metavar="HEADER",
        help="the one header trusted_proxies set the client address in (nginx's proxy_add_x_forwarded_for: "
        "x-forwarded-for; RFC 7239: forwarded); the other is ignored, since a proxy passes it on as the "
        "client wrote it",
    ),
    Option(
        "rate_limit",
        Kind.RATE,
        None,
        nullable=True,
        per_handler=True,
        metavar="RATE[/BURST]",
        shown_default="None (no limit)",
        help="messages per second a peer may send, and a burst ('50/100'); over it the rate-limit policy applies",
    ),
    Option(
        "rate_limit_bytes",
        Kind.RATE,
        None,
        nullable=True,
        per_handler=True,
        metavar="BYTES[/BURST]",
        shown_default="None (no limit)",
        help="bytes per second a peer may send, and a burst ('64KiB/256KiB')",
    ),
    Option(
        "rate_limit_policy",
        Kind.CHOICE,
        "close",
        choices=OVERFLOW_POLICIES,
        per_handler=True,
        metavar="POLICY",
        help="a peer over its rate limit: 'close' it with 1008 'rate limit exceeded', or 'drop' the message "
        "before any hook sees it",
    ),
    # History and presence (docs/delivery.md)
    Option(
        "history_size",
        Kind.AMOUNT,
        0,
        shown_default="0 (off)",
        help="publishes kept per namespace and topic, each with an offset, for recovery after a reconnect "
        "(SSE Last-Event-ID, peer.subscribe(since=...)); 0: no history",
    ),
    Option(
        "history_ttl",
        Kind.SECONDS,
        None,
        nullable=True,
        shown_default="None (no age limit)",
        help="drop stored publishes older than this; on Redis, a topic with no publish for this long loses its stream",
    ),
    Option(
        "history_max_topics",
        Kind.COUNT,
        10_000,
        nullable=True,
        shown_default="10000",
        help="in-memory history: most (namespace, topic) histories kept; a new one past it forgets the one "
        "published to least recently (topic names may come from clients); on Redis, history_ttl bounds them",
    ),
    Option(
        "presence_ttl",
        Kind.SECONDS,
        30.0,
        shown_default="30 s",
        help="with the Redis broker, presence entries of a process that stopped without cleaning up vanish "
        "within this (each process refreshes its own every third of it)",
    ),
    Option(
        "max_presence_size",
        Kind.SIZE,
        4096,
        nullable=True,
        shown_default="4 KiB",
        help="largest presence info (as JSON) a subscribe may show; over it: ConfigurationError in subscribe",
    ),
    # Stopping
    Option(
        "shutdown_timeout",
        Kind.SECONDS,
        5.0,
        shown_default="5 s",
        help="on SIGTERM/SIGINT or stop(), how long peers get to answer the 1001 close",
    ),
    Option(
        "drain_delay",
        Kind.DELAY,
        0.0,
        shown_default="0 s",
        help="on SIGTERM or drain(): seconds between the readiness check failing and new upgrades and event "
        "streams being refused with 503 (the load balancer's time to notice; docs/operations.md)",
    ),
    Option(
        "drain_period",
        Kind.DELAY,
        5.0,
        shown_default="5 s",
        help="on SIGTERM or drain(): the open connections are closed with 1012 (event streams get a retry: "
        "hint) at random moments spread over this many seconds, so their reconnects do not arrive at once",
    ),
    Option(
        "health_path",
        Kind.TEXT,
        None,
        nullable=True,
        metavar="PATH",
        shown_default="None (off)",
        help="also answer the liveness and readiness checks on the main port, at PATH/live and PATH/ready "
        "(they are always on the metrics and admin addresses)",
    ),
    # The HTTP admin API (docs/reference/admin.md)
    Option(
        "admin",
        Kind.TEXT,
        None,
        nullable=True,
        scope=Scope.SERVER,
        metavar="HOST:PORT",
        shown_default="None (off)",
        help="serve the HTTP publish and admin API on an address of its own (needs admin_key)",
    ),
    Option(
        "admin_path",
        Kind.TEXT,
        None,
        nullable=True,
        scope=Scope.SERVER,
        metavar="PATH",
        shown_default="None (off)",
        help="serve the HTTP publish and admin API on the main port under PATH (needs admin_key)",
    ),
    Option(
        "admin_key",
        Kind.TEXT,
        None,
        nullable=True,
        scope=Scope.SERVER,
        metavar="KEY",
        shown_default="None",
        help="the API key the admin API requires (Authorization: Bearer KEY); set it through the "
        "environment, not a flag that ps shows; admin_auth= a callable in Python instead",
    ),
    Option(
        "admin_max_body",
        Kind.SIZE,
        MiB,
        shown_default="1 MiB",
        help="largest admin API request body; over it: 413",
    ),
    Option(
        "admin_rate_limit",
        Kind.RATE,
        (50.0, 100.0),
        nullable=True,
        metavar="RATE[/BURST]",
        shown_default="50/100",
        help="admin API requests per second from one address, and a burst; over it: 429 with Retry-After",
    ),
    # Logs and traces (docs/operations.md)
    Option(
        "log_format",
        Kind.CHOICE,
        "text",
        scope=Scope.SERVER,
        choices=("text", "json"),
        metavar="FORMAT",
        help="'json': one JSON object per log line, with the connection's fields (id, user, path, remote "
        "address, close code and reason, duration); through the logging module",
    ),
    Option(
        "tracing",
        Kind.SWITCH,
        "auto",
        help="OpenTelemetry spans for upgrades, channels RPCs, publishes, recoveries and broker calls; "
        "'auto': when opentelemetry-api is installed (syncws[otel])",
    ),
    # Code that blocks without yielding to gevent (docs/how-to/embedding.md)
    Option(
        "threads",
        Kind.SWITCH,
        "auto",
        per_handler=True,
        help="run views, hooks and event-stream callbacks in a pool of OS threads, so that code which blocks "
        "(time.sleep, requests, C drivers) delays only its own request or peer; 'auto': on unless the process "
        "is gevent-monkey-patched (python -m syncws patches); per handler: where its hooks run",
    ),
    Option(
        "thread_pool_size",
        Kind.COUNT,
        20,
        help="OS threads in that pool; when all are busy, further views and hooks wait for one "
        "(server.stats()['threads'] shows how often)",
    ),
    # The server itself
    Option("host", Kind.TEXT, "127.0.0.1", scope=Scope.SERVER, metavar="HOST", help="interface to bind"),
    Option("port", Kind.PORT, 3000, scope=Scope.SERVER, metavar="PORT", help="port to bind, 0 for any free port"),
    Option(
        "certfile",
        Kind.TEXT,
        None,
        nullable=True,
        scope=Scope.SERVER,
        metavar="PATH",
        shown_default="None (plain HTTP)",
        help="a PEM certificate (chain): serve https:// and wss:// (docs/operations.md)",
    ),
    Option(
        "keyfile",
        Kind.TEXT,
        None,
        nullable=True,
        scope=Scope.SERVER,
        metavar="PATH",
        shown_default="None (in certfile)",
        help="the certificate's private key, when it is not in certfile",
    ),
    Option(
        "metrics",
        Kind.TEXT,
        None,
        nullable=True,
        scope=Scope.SERVER,
        metavar="HOST:PORT",
        shown_default="None (off)",
        help="serve Prometheus metrics at http://HOST:PORT/metrics, an address of their own "
        "(needs syncws[metrics]; docs/operations.md)",
    ),
    Option(
        "metrics_max_connections",
        Kind.COUNT,
        16,
        help="most connections the metrics address serves at once; more wait in the listen backlog "
        "(so it can never use up the process's file descriptors)",
    ),
    Option(
        "metrics_timeout",
        Kind.SECONDS,
        10.0,
        shown_default="10 s",
        help="a metrics connection is closed this long after it was accepted, whatever it is doing "
        "(a scrape takes milliseconds; an idle or trickling client cannot hold a slot)",
    ),
    Option(
        "access_log",
        Kind.BOOL,
        True,
        scope=Scope.SERVER,
        shown_default="on",
        help="log one line per HTTP request to the 'syncws.access' logger",
    ),
    Option(
        "broker",
        Kind.TEXT,
        None,
        scope=Scope.SERVER,
        metavar="URL",
        shown_default="in-process",
        help="pub/sub broker shared by every process: a redis://, rediss://, redis+sentinel:// or "
        "redis+cluster:// URL (valkey:// too; docs/how-to/redis.md), or a Broker object in Python",
    ),
    # The command line only
    Option(
        "workers",
        Kind.COUNT,
        1,
        scope=Scope.CLI,
        help="worker processes sharing the listening port; more than 1 needs --broker",
    ),
    Option(
        "log_level",
        Kind.CHOICE,
        "info",
        scope=Scope.CLI,
        choices=LOG_LEVELS,
        metavar="LEVEL",
        help="logging level (the access log is logged at info)",
    ),
    Option(
        "reload",
        Kind.BOOL,
        False,
        scope=Scope.CLI,
        shown_default="off",
        help="development: restart when a Python file of the app changes (not with --workers)",
    ),
    Option(
        "no_monkey_patch",
        Kind.FLAG,
        False,
        scope=Scope.CLI,
        shown_default="off",
        help="do not gevent-monkey-patch the standard library (patched by default so that blocking "
        "I/O in views and hooks yields to other connections)",
    ),
)

BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}
LIMITS: tuple[Option, ...] = tuple(o for o in OPTIONS if o.scope is Scope.LIMIT)
PER_HANDLER: tuple[str, ...] = tuple(o.name for o in OPTIONS if o.per_handler)


def metavar(option: Option) -> str:
    return option.metavar or _METAVARS.get(option.kind, option.name.upper())


def from_environ(environ: Mapping[str, str], names: Iterable[str] | None = None) -> dict[str, Any]:
    """The options set through ``SYNCWS_*`` variables (all rows, or those in ``names``).

    Empty variables count as unset.  A bad value raises ConfigurationError
    naming the variable.
    """
    found: dict[str, Any] = {}
    for option in OPTIONS:
        if names is not None and option.name not in names:
            continue
        text = environ.get(option.env_var, "").strip()
        if not text:
            continue
        try:
            found[option.name] = option.parse(text)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{option.env_var} {exc}") from None
    return found


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``candidates``, or ""."""
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_option_names(options: Mapping[str, Any], where: str, extra: Iterable[str] = ()) -> None:
    """TypeError naming ``where`` (``serve()``) for a keyword that is no option, with the closest one."""
    known = [o.name for o in OPTIONS if o.scope is not Scope.CLI] + list(extra)
    for name in options:
        if name not in known:
            hint = did_you_mean(name, known)
            if name in BY_NAME:
                hint = f" ({name} is for the command line only: {BY_NAME[name].flag})"
            raise TypeError(f"{where} got an unknown option {name!r}{hint}; the options: docs/reference/options.md")


def workers_need_a_broker(given: str, remedy: str) -> str:
    """What ``--workers N`` and ``gunicorn -w N`` say when no broker is set: ``given`` is the setting, ``remedy`` the fix."""
    return (
        f"{given} needs a broker: with in-memory pub/sub each worker would have its own subscribers, "
        f"so a publish would reach only the clients of one worker; {remedy}"
    )


#: ``SYNCWS_*`` variables that are not options: the reloader's and the test scripts'.
OTHER_VARIABLES = frozenset(
    {
        "SYNCWS_RELOADER_FD",
        "SYNCWS_RELOADER_RESTARTED",
        "SYNCWS_AUTOBAHN",
        "SYNCWS_AUTOBAHN_HOME",
        "SYNCWS_OTHER_PYTHONS",
    }
)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``SYNCWS_*`` variable that names no option (a typo is otherwise silently ignored)."""
    known = {option.env_var for option in OPTIONS} | OTHER_VARIABLES
    return [
        f"{name} is not a syncws setting and is ignored{did_you_mean(name, known)}"
        for name in sorted(environ)
        if name.startswith("SYNCWS_") and name not in known
    ]


def check_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Validate per-handler overrides; TypeError for a name that is not one."""
    unknown = set(overrides) - set(PER_HANDLER)
    if unknown:
        raise TypeError(
            f"unknown option(s): {', '.join(sorted(unknown))}; a handler may override {', '.join(PER_HANDLER)}"
        )
    return {name: BY_NAME[name].validate(value) for name, value in overrides.items()}


@dataclass(frozen=True)
class ServerOptions:
    """The validated limits a server runs with (one field per LIMIT row of the table)."""

    max_message_size: int | None = MiB
    max_buffer_size: int | None = MiB
    overflow: str = "close"
    compression: str | None = None
    compression_threshold: int = 128
    compression_window_bits: int = 12
    close_timeout: float = 5.0
    max_request_line: int = 8192
    max_header_size: int = 16 * 1024
    max_header_count: int = 100
    handshake_timeout: float | None = 10.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    allowed_origins: OriginPolicy = None
    max_connections: int | None = None
    max_connections_per_ip: int | None = None
    trusted_proxies: tuple[Any, ...] | None = None
    forwarded_header: str = "x-forwarded-for"
    rate_limit: tuple[float, float] | None = None
    rate_limit_bytes: tuple[float, float] | None = None
    rate_limit_policy: str = "close"
    history_size: int = 0
    history_ttl: float | None = None
    history_max_topics: int | None = 10_000
    presence_ttl: float = 30.0
    max_presence_size: int | None = 4096
    shutdown_timeout: float = 5.0
    drain_delay: float = 0.0
    drain_period: float = 5.0
    health_path: str | None = None
    admin_max_body: int = MiB
    admin_rate_limit: tuple[float, float] | None = (50.0, 100.0)
    tracing: str = "auto"
    metrics_max_connections: int = 16
    metrics_timeout: float = 10.0
    threads: str = "auto"
    thread_pool_size: int = 20

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, BY_NAME[f.name].validate(getattr(self, f.name)))

    def overridden(self, overrides: Mapping[str, Any]) -> ServerOptions:
        """These options with a handler's overrides (checked by :func:`check_overrides`) in place.

        A handler's ``threads="auto"`` means the server's choice, whatever
        that is, so it is not copied: the server's ``threads`` stays.
        """
        changes = {name: value for name, value in overrides.items() if not (name == "threads" and value == "auto")}
        return replace(self, **changes) if changes else self


_SCOPE_TEXT = {
    Scope.LIMIT: "`serve()`, `Server()`",
    Scope.SERVER: "`serve()`, `Server()`",
    Scope.CLI: "command line only",
}


def reference_table() -> str:
    """The Markdown table of ``docs/reference/options.md``, made from :data:`OPTIONS`."""
    rows = [
        "| option | default | flag | variable | given to | per handler | meaning |",
        "|---|---|---|---|---|---|---|",
    ]
    for option in OPTIONS:
        values = f"{option.expected}{', or None' if option.nullable else ''}"
        if option.kind is Kind.FLAG:
            flag = f"`{option.flag}`"
        elif option.kind is Kind.BOOL:
            flag = f"`{option.flag}` / `--no-{option.flag[2:]}`"
        else:
            flag = f"`{option.flag} {metavar(option)}`"
        rows.append(
            f"| `{option.name}` | {option.default_text} | {flag} | `{option.env_var}` | {_SCOPE_TEXT[option.scope]} "
            f"| {'yes' if option.per_handler else ''} | {option.help}; {values} |"
        )
    return "\n".join(rows) + "\n"
