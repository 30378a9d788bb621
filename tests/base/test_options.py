"""The option table: parsing text, checking values, and what is derived from it."""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest

from syncws import ConfigurationError, ServerOptions, define_websocket_handler
from syncws.base.options import (
    BY_NAME,
    LIMITS,
    OPTIONS,
    PER_HANDLER,
    Kind,
    Scope,
    check_overrides,
    from_environ,
    normalize_origins,
    origin_allowed,
    reference_table,
)
from syncws.cli.main import build_parser


def test_server_options_has_one_field_per_limit_with_the_table_default():
    fields = {f.name: f.default for f in dataclasses.fields(ServerOptions)}
    assert fields == {o.name: o.default for o in LIMITS}


def test_every_row_has_a_flag_a_variable_and_a_table_line():
    help_text = build_parser().format_help()
    table = reference_table()
    for option in OPTIONS:
        assert option.flag in help_text
        assert f"`{option.env_var}`" in table
        assert option.env_var == "SYNCWS_" + option.name.upper()


def test_the_per_handler_options_are_what_handlers_accept():
    assert PER_HANDLER == (
        "max_message_size",
        "compression",
        "ping_interval",
        "ping_timeout",
        "allowed_origins",
        "rate_limit",
        "rate_limit_bytes",
        "rate_limit_policy",
        "threads",
    )
    for name in PER_HANDLER:
        value = None if BY_NAME[name].nullable else BY_NAME[name].default if name == "rate_limit_policy" else True
        handler = define_websocket_handler(**{name: value})
        assert name in handler.overrides
    with pytest.raises(TypeError, match="unknown option"):
        check_overrides({"overflow": "drop"})  # a server-wide option only


@pytest.mark.parametrize(
    "name, text, value",
    [
        ("max_message_size", "64KiB", 65536),
        ("max_message_size", "2 mb", 2 * 1024 * 1024),
        ("max_message_size", "none", None),
        ("max_header_count", "50", 50),
        ("close_timeout", "2.5", 2.5),
        ("ping_interval", "Unlimited", None),
        ("overflow", "DROP", "drop"),
        ("compression", "Deflate", "deflate"),
        ("compression", "none", None),
        ("compression_threshold", "1KiB", 1024),
        ("compression_window_bits", "9", 9),
        ("compression_window_bits", "15", 15),
        ("allowed_origins", "https://a.example, *", ["https://a.example", "*"]),
        ("threads", "on", "on"),
        ("threads", "yes", "on"),
        ("threads", "off", "off"),
        ("threads", "0", "off"),
        ("threads", "AUTO", "auto"),
        ("thread_pool_size", "4", 4),
        ("access_log", "no", False),
        ("no_monkey_patch", "1", True),
        ("port", "0", 0),
        ("log_level", "Warning", "warning"),
        ("host", "::1", "::1"),
        ("max_connections", "100", 100),
        ("max_connections_per_ip", "none", None),
        ("rate_limit", "50/100", (50.0, 100.0)),
        ("rate_limit", "2.5", (2.5, 2.5)),
        ("rate_limit_bytes", "64KiB/1MiB", (65536.0, 1048576.0)),
        ("rate_limit_policy", "Drop", "drop"),
        ("history_size", "0", 0),
        ("history_size", "1000", 1000),
        ("history_ttl", "300", 300.0),
        ("history_ttl", "none", None),
        ("presence_ttl", "1.5", 1.5),
    ],
)
def test_text_is_parsed(name, text, value):
    assert BY_NAME[name].parse(text) == value


@pytest.mark.parametrize(
    "name, text",
    [
        ("max_message_size", "0"),
        ("max_message_size", "lots"),
        ("max_message_size", "5 parsecs"),
        ("max_request_line", "none"),
        ("max_header_count", "-3"),
        ("close_timeout", "inf"),
        ("ping_timeout", "nan"),
        ("overflow", "explode"),
        ("compression", "gzip"),
        ("compression_window_bits", "8"),
        ("compression_window_bits", "16"),
        ("compression_window_bits", "x"),
        ("allowed_origins", " , "),
        ("threads", "many"),
        ("threads", "4"),
        ("thread_pool_size", "0"),
        ("access_log", "maybe"),
        ("port", "70000"),
        ("port", "eighty"),
        ("host", " "),
        ("log_level", "loud"),
        ("max_connections", "0"),
        ("rate_limit", "0/5"),
        ("rate_limit", "5/0"),
        ("rate_limit", "1/2/3"),
        ("rate_limit", "fast"),
        ("rate_limit_policy", "sleep"),
        ("trusted_proxies", "10.0.0.0/33"),
        ("trusted_proxies", " , "),
        ("history_size", "-1"),
        ("history_size", "lots"),
        ("history_ttl", "0"),
        ("presence_ttl", "none"),
    ],
)
def test_bad_text_says_what_was_expected(name, text):
    option = BY_NAME[name]
    with pytest.raises(ConfigurationError, match="must be") as info:
        option.parse(text)
    assert repr(text) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "options",
    [
        {"max_message_size": 0},
        {"max_message_size": True},
        {"max_buffer_size": 1.5},
        {"close_timeout": None},
        {"close_timeout": math.nan},
        {"ping_interval": -1},
        {"overflow": "explode"},
        {"threads": 0},
        {"threads": "yes"},
        {"threads": None},
        {"thread_pool_size": 0},
        {"thread_pool_size": True},
        {"allowed_origins": 42},
        {"allowed_origins": [""]},
        {"max_header_count": None},
        {"compression": "gzip"},
        {"compression": True},
        {"compression_window_bits": 8},
        {"compression_window_bits": 12.0},
        {"compression_threshold": 0},
        {"max_connections": 0},
        {"max_connections_per_ip": -1},
        {"trusted_proxies": ["nowhere"]},
        {"trusted_proxies": []},
        {"trusted_proxies": [42]},
        {"rate_limit": (1, 2, 3)},
        {"rate_limit": "50/100"},
        {"rate_limit": (float("inf"), 1)},
        {"rate_limit": True},
        {"history_size": -1},
        {"history_size": 2.5},
        {"history_size": None},
        {"history_ttl": 0},
        {"presence_ttl": None},
    ],
)
def test_bad_values_are_refused_by_name(options):
    (name,) = options
    with pytest.raises(ConfigurationError, match=name):
        ServerOptions(**options)


def test_values_are_normalised():
    options = ServerOptions(allowed_origins=["https://A.example/", "*"], threads=True)
    assert options.allowed_origins == frozenset({"https://a.example", "*"})
    assert options.threads == "on"
    assert ServerOptions(threads=False).threads == "off"
    assert ServerOptions(threads="Auto").threads == "auto"
    assert (ServerOptions().threads, ServerOptions().thread_pool_size) == ("auto", 20)


def test_the_environment_is_read_by_variable_and_blank_means_unset():
    environ = {"SYNCWS_PING_INTERVAL": "none", "SYNCWS_MAX_MESSAGE_SIZE": " ", "SYNCWS_PORT": "8000"}
    assert from_environ(environ) == {"ping_interval": None, "port": 8000}
    assert from_environ(environ, {"port"}) == {"port": 8000}
    with pytest.raises(ConfigurationError, match="SYNCWS_OVERFLOW must be one of close, drop"):
        from_environ({"SYNCWS_OVERFLOW": "sideways"})


def test_origins():
    assert normalize_origins(None) is None
    check = normalize_origins(lambda origin: origin.endswith(".example"))
    assert origin_allowed(check, "https://a.example") and not origin_allowed(check, "https://evil.test")
    assert not origin_allowed(lambda origin: 1 / 0, "https://a.example")  # a raising policy refuses
    policy = normalize_origins("https://A.example")
    assert origin_allowed(policy, "https://a.example/") and not origin_allowed(policy, "http://a.example")
    assert origin_allowed(policy, None)  # no Origin header: not a browser
    assert origin_allowed(normalize_origins(["*"]), "null")


def test_scopes_and_kinds_cover_the_table():
    assert {o.scope for o in OPTIONS} == set(Scope)
    assert {o.kind for o in OPTIONS} <= set(Kind)
    signature = inspect.signature(define_websocket_handler)
    assert "kwargs" in signature.parameters  # per-handler options come as keywords


def test_overrides_are_resolved_into_one_options_object():
    from syncws.base.options import ServerOptions, check_overrides

    server = ServerOptions(max_message_size=1000, threads="on")
    assert server.overridden({}) is server
    handler = server.overridden(check_overrides({"max_message_size": 2048, "ping_interval": None}))
    assert (handler.max_message_size, handler.ping_interval, handler.threads) == (2048, None, "on")
    # A handler's threads="auto" is the server's choice: not copied over the server's "on".
    assert server.overridden(check_overrides({"threads": "auto"})).threads == "on"
    assert server.overridden(check_overrides({"threads": "off"})).threads == "off"


def test_a_handler_resolves_its_options_once_per_server():
    from syncws import define_websocket_handler
    from syncws.base.options import ServerOptions
    from syncws.pubsub.broker import Broker
    from syncws.server.runtime import Runtime

    handler = define_websocket_handler(message=lambda peer, message: None, max_message_size=10)
    first = Runtime(ServerOptions(), Broker())
    resolved = handler.options_for(first)
    assert resolved.max_message_size == 10 and handler.options_for(first) is resolved
    second = Runtime(ServerOptions(ping_interval=5), Broker())
    assert handler.options_for(second).ping_interval == 5
