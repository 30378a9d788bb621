"""The limit options on the command line: --flags and SYNCWS_* environment variables."""

from __future__ import annotations

import signal
import struct

import pytest
import websocket

from syncws.base.options import BY_NAME, LIMITS, ServerOptions
from syncws.cli.main import build_parser
from syncws.cli.options import server_options
from syncws.protocol import OP_BINARY, OP_CLOSE, OP_PING

from ..support import RawClient, SyncwsRunner, http_exchange, parse_response, recv_close, upgrade_request

pytestmark = pytest.mark.slow  # subprocesses, browsers, Redis or load: not in the fast loop

APP = """
    from syncws import App, define_websocket_handler

    app = App()
    app.get("/_ws", define_websocket_handler(message=lambda peer, message: peer.send(message.bytes())))
    app.get("/", lambda request: "home")
"""


def options_for(*argv: str, env: dict | None = None) -> dict:
    return server_options(build_parser().parse_args(["mod:app", *argv]), env or {})


def test_every_server_option_has_a_flag_and_a_variable():
    names = {option.name for option in LIMITS}
    assert names == set(ServerOptions.__dataclass_fields__)
    help_text = build_parser().format_help()
    for name in names:
        assert "--" + name.replace("_", "-") in help_text
    assert "SYNCWS_<LIMIT>" in " ".join(help_text.split())


def test_nothing_given_means_the_server_defaults():
    assert options_for() == {}


def test_flags_are_parsed():
    options = options_for(
        "--max-message-size",
        "64KiB",
        "--max-buffer-size",
        "none",
        "--overflow",
        "drop",
        "--close-timeout",
        "2.5",
        "--max-request-line",
        "4096",
        "--max-header-size",
        "8k",
        "--max-header-count",
        "50",
        "--handshake-timeout",
        "off",
        "--ping-interval",
        "15",
        "--ping-timeout",
        "none",
        "--allowed-origins",
        "https://a.example, https://b.example",
        "--shutdown-timeout",
        "30",
    )
    assert options == {
        "max_message_size": 65536,
        "max_buffer_size": None,
        "overflow": "drop",
        "close_timeout": 2.5,
        "max_request_line": 4096,
        "max_header_size": 8192,
        "max_header_count": 50,
        "handshake_timeout": None,
        "ping_interval": 15.0,
        "ping_timeout": None,
        "allowed_origins": ["https://a.example", "https://b.example"],
        "shutdown_timeout": 30.0,
    }
    ServerOptions(**options)  # and the server takes them


def test_environment_variables_and_flags_win():
    env = {
        "SYNCWS_MAX_MESSAGE_SIZE": "2MiB",
        "SYNCWS_PING_INTERVAL": "none",
        "SYNCWS_ALLOWED_ORIGINS": "*",
        "SYNCWS_HANDSHAKE_TIMEOUT": " ",  # blank: ignored
    }
    assert options_for(env=env) == {
        "max_message_size": 2 * 1024 * 1024,
        "ping_interval": None,
        "allowed_origins": ["*"],
    }
    assert options_for("--ping-interval", "5", env=env)["ping_interval"] == 5.0
    assert [option.env_var for option in LIMITS][:2] == ["SYNCWS_MAX_MESSAGE_SIZE", "SYNCWS_MAX_BUFFER_SIZE"]


@pytest.mark.parametrize(
    "name,value",
    [
        ("max_message_size", "0"),
        ("max_message_size", "lots"),
        ("max_request_line", "none"),
        ("max_header_count", "-3"),
        ("overflow", "explode"),
        ("ping_interval", "0"),
        ("close_timeout", "none"),
        ("ping_timeout", "nan"),
        ("allowed_origins", " , "),
    ],
)
def test_bad_values_are_refused(name, value, capsys):
    with pytest.raises(SystemExit) as info:
        options_for("--" + name.replace("_", "-"), value)
    assert info.value.code == 2
    with pytest.raises(ValueError, match=BY_NAME[name].env_var):
        options_for(env={BY_NAME[name].env_var: value})


@pytest.fixture
def run(tmp_path):
    with SyncwsRunner(tmp_path) as start:
        yield start


def test_a_bad_variable_is_a_one_line_error(run):
    process = run("limitsapp:app", "--port", "0", files={"limitsapp.py": APP}, env={"SYNCWS_PING_TIMEOUT": "soon"})
    assert process.finish() == 2
    lines = process.err.strip().splitlines()
    assert len(lines) == 1 and "SYNCWS_PING_TIMEOUT" in lines[0] and "soon" in lines[0]


class _Server:
    def __init__(self, url: str) -> None:
        self.port = int(url.rsplit(":", 1)[1])


def test_the_limits_reach_the_server(run):
    process = run(
        "limitsapp:app",
        "--port",
        "0",
        "--max-message-size",
        "100",
        "--allowed-origins",
        "https://good.example",
        "--ping-interval",
        "0.2",
        "--ping-timeout",
        "0.3",
        files={"limitsapp.py": APP},
        env={"SYNCWS_MAX_HEADER_COUNT": "8"},
    )
    url = process.wait_for_url()
    server = _Server(url)
    ws = url.replace("http://", "ws://") + "/_ws"
    # allowed_origins
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(ws, origin="https://evil.example", timeout=5)
    assert info.value.status_code == 403
    # max_message_size (and the keepalive: websocket-client answers pings while it reads)
    client = websocket.create_connection(ws, origin="https://good.example", timeout=5)
    client.send_binary(b"x" * 100)
    assert client.recv() == b"x" * 100
    client.send_binary(b"x" * 101)
    assert recv_close(client)[0] == 1009
    client.close()
    # ping_interval / ping_timeout: a silent raw client is pinged, then closed with 1011
    with RawClient(server) as silent:
        frames = silent.read_all_frames()
    assert [opcode for opcode, _ in frames] == [OP_PING, OP_CLOSE]
    assert struct.unpack("!H", frames[1][1][:2])[0] == 1011
    # SYNCWS_MAX_HEADER_COUNT from the environment
    status, _, _ = parse_response(http_exchange(server, upgrade_request(extra="A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n")))
    assert status == 431
    process.proc.send_signal(signal.SIGTERM)
    assert process.finish() == 0


def test_max_message_size_close_code_through_the_cli(run):
    process = run("limitsapp:app", "--port", "0", "--max-message-size", "1KiB", files={"limitsapp.py": APP})
    server = _Server(process.wait_for_url())
    with RawClient(server) as client:
        client.send_frame(OP_BINARY, b"y" * 1025)
        frames = client.read_all_frames()
    assert frames[0][0] == OP_CLOSE and struct.unpack("!H", frames[0][1][:2])[0] == 1009
    process.proc.send_signal(signal.SIGTERM)
    assert process.finish() == 0
