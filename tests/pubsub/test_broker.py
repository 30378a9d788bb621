"""The broker interface without Redis: channel names, envelopes, make_broker,
and the calls a server makes on its broker (checked with a recording Broker).

The Redis broker itself, with a real redis-server, is in test_redis_broker.py.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from syncws import Broker, serve
from syncws.base.options import BY_NAME
from syncws.protocol import OP_BINARY, OP_TEXT
from syncws.protocol.payload import Outgoing
from syncws.pubsub.broker import (
    LocalBroker,
    channel_name,
    decode_envelope,
    encode_envelope,
    new_origin,
)
from syncws.pubsub.factory import make_broker
from syncws.pubsub.redis_broker import RedisBroker
from syncws.server.server import Server

from ..apps.broker_app import app as broker_app
from ..conftest import connect, wait_until
from ..support import SyncwsProcess

ENV_VAR = BY_NAME["broker"].env_var
assert ENV_VAR == "SYNCWS_BROKER"

pytestmark = pytest.mark.slow  # subprocesses, browsers, Redis or load: not in the fast loop

ROOT = Path(__file__).resolve().parents[2]


# -- channel names -------------------------------------------------------------------


def test_channel_name_shapes():
    assert channel_name("syncws", "/_ws", "chat") == "syncws:{chat}:ns:%2F_ws"
    assert channel_name("syncws", None, "chat") == "syncws:{chat}:all"
    assert channel_name("app1", "/rooms/a", "t") == "app1:{t}:ns:%2Frooms%2Fa"
    # braces in a topic are encoded: they can never end the hash tag early
    assert channel_name("p", "n", "a}b{") == "p:{a%7Db%7B}:ns:n"


@pytest.mark.parametrize(
    "first, second",
    [
        (("a:b", "c"), ("a", "b:c")),  # ':' in a namespace cannot shift the split
        (("a", "b:c"), ("a:b", "c")),
        (("%3A", "t"), (":", "t")),  # '%' is escaped too: no double meaning
        (("a%3Ab", "c"), ("a:b", "c")),
        (("x", "%41"), ("x", "A")),
        (("all", "t"), (None, "t")),  # a namespace named "all" is not the all-namespaces channel
        ((None, "ns:x:t"), ("x", "t")),
        (("", "a:b"), (":a", "b")),
        (("chat:general", "news"), ("chat", "general:news")),
    ],
)
def test_channel_names_are_unambiguous(first, second):
    assert channel_name("p", *first) != channel_name("p", *second)


def test_channel_names_are_injective_over_tricky_parts():
    parts = ["", ":", "::", "%", "%25", "%3A", "a:b", "a", "b", "a%b", "/", "/x:y", "é", "all", "ns", " "]
    names = {}
    for ns in [None, *parts]:
        for topic in parts[1:]:  # a topic is never empty
            name = channel_name("syncws", ns, topic)
            assert name not in names, (names.get(name), (ns, topic))
            names[name] = (ns, topic)
            assert "\n" not in name and " " not in name


# -- envelopes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, opcode, payload",
    [
        ("héllo wörld", OP_TEXT, "héllo wörld".encode()),
        ("line1\nline2\n", OP_TEXT, b"line1\nline2\n"),  # newlines in the payload are fine
        ("", OP_TEXT, b""),
        (None, OP_TEXT, b""),
        (b'\x00\xff\n{"v":1}\n\xfe', OP_BINARY, b'\x00\xff\n{"v":1}\n\xfe'),
        (bytearray(b"ab"), OP_BINARY, b"ab"),
        (b"", OP_BINARY, b""),
        ({"a": [1, "ü", None], "b": True}, OP_TEXT, '{"a":[1,"ü",null],"b":true}'.encode()),
        ([1, 2.5], OP_TEXT, b"[1,2.5]"),
        (True, OP_TEXT, b"true"),
        (42, OP_TEXT, b"42"),
    ],
)
@pytest.mark.parametrize("namespace", ["/_ws", None, "chat:general\n%3A", ""])
def test_envelope_round_trip(data, opcode, payload, namespace):
    origin = new_origin()
    wire = encode_envelope(origin, namespace, "topic:x", Outgoing(data))
    assert isinstance(wire, bytes)
    got_origin, got_ns, got_topic, outgoing, _, audience = decode_envelope(wire)
    assert (got_origin, got_ns, got_topic, audience) == (origin, namespace, "topic:x", None)
    assert outgoing.opcode == opcode
    assert outgoing.is_binary == (opcode == OP_BINARY)
    assert outgoing.payload == payload
    # it frames like the original would
    assert outgoing.frame == Outgoing(data).frame


def test_envelope_json_payload_decodes_to_the_same_value():
    value = {"user": "zoë", "n": [1, 2, {"deep": None}]}
    _, _, _, outgoing, _, _ = decode_envelope(encode_envelope("o", "/ns", "t", Outgoing(value)))
    assert json.loads(outgoing.text) == value
    assert outgoing.text == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_origins_are_unique():
    assert len({new_origin() for _ in range(100)}) == 100


_MISSING = object()


def _header(**fields) -> bytes:
    """A valid envelope header with some fields changed (or left out: ``_MISSING``)."""
    base = {"v": 1, "o": "origin", "n": "/ns", "t": "topic", "b": False}
    base.update(fields)
    base = {k: v for k, v in base.items() if v is not _MISSING}
    return json.dumps(base).encode()


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"no header separator at all",
        b"not json\npayload",
        b"\xff\xfe\npayload",  # header is not UTF-8
        b"[1,2]\npayload",  # header not an object
        b"null\n",
        b'"v"\n',
        _header(v=2) + b"\npayload",  # unknown version
        _header(v=True) + b"\npayload",  # true == 1 in Python, but it is not version 1
        _header(v=_MISSING) + b"\npayload",
        _header(t=_MISSING) + b"\npayload",
        _header(t=5) + b"\npayload",
        _header(t=None) + b"\npayload",
        _header(n=5) + b"\npayload",
        _header(n=["a"]) + b"\npayload",
        _header(o=_MISSING) + b"\npayload",  # no origin: cannot tell our own from others
        _header(o=123) + b"\npayload",
        _header(b=False) + b"\n\xff\xfe not utf-8",  # a text payload must be UTF-8
        _header(k="x") + b"\npayload",  # an audience other than h (history) and p (plain)
        _header(k=1) + b"\npayload",
    ],
)
def test_malformed_envelopes_raise_value_error(wire):
    with pytest.raises(ValueError):
        decode_envelope(wire)


@pytest.mark.parametrize("audience", ["h", "p"])
def test_an_envelope_says_which_servers_it_is_for(audience):
    assert decode_envelope(_header(k=audience) + b"\nx")[5] == audience


def test_binary_envelope_accepts_any_bytes():
    _, _, _, outgoing, _, _ = decode_envelope(_header(b=True) + b"\n\xff\xfe")
    assert outgoing.is_binary and outgoing.payload == b"\xff\xfe"


# -- make_broker ---------------------------------------------------------------------


def test_make_broker_none_is_the_local_broker(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    broker = make_broker(None)
    assert type(broker) is LocalBroker is Broker


def test_make_broker_empty_env_is_local(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "")
    assert type(make_broker(None)) is LocalBroker


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6399/0", "rediss://user:pw@example.invalid:6380/2", "unix:///tmp/redis.sock?db=1"]
)
def test_make_broker_url_builds_a_redis_broker_without_connecting(url, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    broker = make_broker(url)
    assert isinstance(broker, RedisBroker)
    assert broker.url == url
    assert broker.connected is False
    assert broker.channels == frozenset()


def test_make_broker_reads_the_environment(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "redis://127.0.0.1:6399/3")
    broker = make_broker(None)
    assert isinstance(broker, RedisBroker) and broker.url == "redis://127.0.0.1:6399/3"
    # an explicit argument wins over the environment
    assert type(make_broker(LocalBroker())) is LocalBroker
    assert make_broker("redis://127.0.0.1:1/0").url == "redis://127.0.0.1:1/0"


def test_make_broker_returns_an_instance_as_is(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "redis://127.0.0.1:6399/3")
    mine = RecordingBroker()
    assert make_broker(mine) is mine


@pytest.mark.parametrize(
    "spec, environment, error, match",
    [
        *[
            pytest.param(url, None, ValueError, "broker URL", id=f"unknown-url-{url}")
            for url in ["bogus://x", "localhost:6379", "http://127.0.0.1:6379", "REDIS"]
        ],
        pytest.param(None, "bogus://x", ValueError, "bogus://x", id="bad-url-from-the-environment"),
        *[
            pytest.param(spec, None, TypeError, "broker", id=f"other-type-{type(spec).__name__}")
            for spec in [42, b"redis://127.0.0.1:6379/0", object(), ["redis://x"], RedisBroker]
        ],
    ],
)
def test_make_broker_rejects(spec, environment, error, match, monkeypatch):
    """Unknown URLs, a bad URL in SYNCWS_BROKER, and specs of other types."""
    if environment is None:
        monkeypatch.delenv(ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ENV_VAR, environment)
    with pytest.raises(error, match=match):
        make_broker(spec)


def test_server_takes_its_broker_from_the_environment(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "redis://127.0.0.1:6399/0")
    server = Server(broker_app, port=0)
    assert isinstance(server.broker, RedisBroker)
    assert server.registry.on_interest == server.broker.interest
    monkeypatch.delenv(ENV_VAR)
    assert type(Server(broker_app, port=0).broker) is LocalBroker


def test_serve_with_a_bad_broker_fails_before_listening(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(ValueError):
        serve(broker_app, port=0, background=True, broker="bogus://x")
    with pytest.raises(TypeError):
        serve(broker_app, port=0, background=True, broker=3)


def _cli(*args: str, env: dict | None = None) -> SyncwsProcess:
    """``python -m syncws tests.apps.broker_app:app --port 0 ARGS`` from the repository root."""
    return SyncwsProcess("tests.apps.broker_app:app", "--port", "0", *args, cwd=ROOT, env=env)


def test_cli_bogus_broker_exits_2_with_one_clear_line():
    result = _cli("--broker", "bogus://x")
    assert result.finish() == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("syncws: error: ")
    assert "bogus://x" in lines[0] and "redis://" in lines[0]
    assert "Traceback" not in result.err and "serving" not in result.out


def test_cli_bogus_broker_from_the_environment_exits_2():
    result = _cli(env={ENV_VAR: "bogus://x"})
    assert result.finish() == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("syncws: error: ") and "bogus://x" in lines[0], result.err


def test_cli_help_documents_broker():
    result = SyncwsProcess("--help", cwd=ROOT)
    assert result.finish() == 0
    assert "--broker" in result.out and ENV_VAR in result.out


# -- what a server tells its broker ----------------------------------------------------


class RecordingBroker(Broker):
    """Records every call; shares ``events`` with a fake local subscriber."""

    def __init__(self, events: list | None = None) -> None:
        self.events = events if events is not None else []
        self.deliver = None

    def start(self, deliver, interests):
        self.deliver = deliver
        self.started_with = interests()
        self.events.append(("start",))

    def stop(self):
        self.events.append(("stop",))

    def relay(self, namespace, topic, outgoing):
        self.events.append(("relay", namespace, topic, outgoing.payload, outgoing.is_binary))

    def interest(self, namespace, topic, present):
        self.events.append(("interest", namespace, topic, present))

    def interests(self) -> list:
        return [e[1:] for e in self.events if e[0] == "interest"]

    def relays(self) -> list:
        return [e[1:] for e in self.events if e[0] == "relay"]


class FakeSubscriber:
    """A registry subscriber that records deliveries in the broker's event list."""

    def __init__(self, namespace: str, events: list, name: str = "fake") -> None:
        self.namespace = namespace
        self.events = events
        self.name = name

    def deliver(self, outgoing):
        self.events.append(("deliver", self.name, outgoing.payload))


def _recv_json(client):
    return json.loads(client.recv())


_clients: list = []


@pytest.fixture(autouse=True)
def _close_clients(start_server):
    """Close this test's clients before its servers stop (they would wait for them)."""
    yield
    while _clients:
        _clients.pop().close()


def _open(server, path="/_ws", subs=()):
    query = "?" + "&".join(f"sub={t}" for t in subs) if subs else ""
    client = connect(server, path + query)
    _clients.append(client)
    hello = _recv_json(client)
    assert hello["ack"] == "open"
    return client


def _cmd(client, **cmd):
    client.send(json.dumps(cmd))
    if cmd.get("ack", True):
        reply = _recv_json(client)
        assert reply["ack"] == cmd["op"], reply
        return reply


def test_start_and_stop_reach_the_broker(start_server):
    broker = RecordingBroker()
    server = start_server(broker_app, broker=broker)
    assert server.broker is broker
    assert broker.deliver == server.runtime.deliver_relayed  # a callback, not the server
    assert broker.started_with == []
    assert broker.events == [("start",)]
    server.stop(timeout=2)
    assert broker.events == [("start",), ("stop",)]


def test_peer_publish_delivers_locally_first_then_relays_once(start_server):
    broker = RecordingBroker()
    server = start_server(broker_app, broker=broker)
    fake = FakeSubscriber("/rooms/a", broker.events)
    server.registry.subscribe(fake, "news")
    sender = _open(server, "/rooms/a", subs=["news"])
    listener = _open(server, "/rooms/a", subs=["news"])
    del broker.events[:]

    _cmd(sender, op="pub", topic="news", data="hello")
    assert listener.recv() == "hello"
    assert broker.events == [
        ("deliver", "fake", b"hello"),
        ("relay", "/rooms/a", "news", b"hello", False),
    ]

    _cmd(sender, op="pub", topic="news", b64="AP8=")  # bytes 00 ff
    assert listener.recv() == b"\x00\xff"
    _cmd(sender, op="pub", topic="news", data={"k": [1, "é"]})
    assert listener.recv() == '{"k":[1,"é"]}'
    assert broker.relays()[1:] == [
        ("/rooms/a", "news", b"\x00\xff", True),
        ("/rooms/a", "news", '{"k":[1,"é"]}'.encode(), False),
    ]

    # a publish with no local subscriber at all is still relayed (others may have some)
    del broker.events[:]
    _cmd(sender, op="pub", topic="nobody-here", data="x")
    assert broker.events == [("relay", "/rooms/a", "nobody-here", b"x", False)]


def test_server_publish_delivers_locally_first_then_relays(start_server):
    broker = RecordingBroker()
    server = start_server(broker_app, broker=broker)
    for ns in ("/a", "/b"):
        server.registry.subscribe(FakeSubscriber(ns, broker.events, ns), "t")
    del broker.events[:]

    server.publish("t", "to all")
    assert wait_until(lambda: len(broker.events) >= 3)
    delivered, relayed = broker.events[:2], broker.events[2]
    assert sorted(delivered) == [("deliver", "/a", b"to all"), ("deliver", "/b", b"to all")]
    assert relayed == ("relay", None, "t", b"to all", False)

    del broker.events[:]
    server.publish("t", b"\x01", namespace="/b")
    assert wait_until(lambda: len(broker.events) >= 2)
    assert broker.events == [("deliver", "/b", b"\x01"), ("relay", "/b", "t", b"\x01", True)]


def test_relayed_messages_are_delivered_locally_and_never_relayed_again(start_server):
    broker = RecordingBroker()
    server = start_server(broker_app, broker=broker)
    in_a = _open(server, "/rooms/a", subs=["t"])
    in_b = _open(server, "/rooms/b", subs=["t"])
    fake = FakeSubscriber("/rooms/a", broker.events)
    server.registry.subscribe(fake, "t")
    del broker.events[:]

    # a relayed publish from a peer of /rooms/a elsewhere: only /rooms/a here
    broker.deliver("/rooms/a", "t", Outgoing("from elsewhere"))
    assert in_a.recv() == "from elsewhere"
    # namespace None: every namespace
    broker.deliver(None, "t", Outgoing(b"\x07"))
    assert in_a.recv() == b"\x07"
    assert in_b.recv() == b"\x07"  # and nothing before it: /rooms/a's message did not leak here
    assert wait_until(lambda: len(broker.events) == 2)
    assert broker.events == [("deliver", "fake", b"from elsewhere"), ("deliver", "fake", b"\x07")]
    assert broker.relays() == []


def test_interest_follows_websocket_subscribers(start_server):
    broker = RecordingBroker()
    server = start_server(broker_app, broker=broker)

    a1 = _open(server, "/rooms/a", subs=["t"])
    assert broker.interests() == [(None, "t", True), ("/rooms/a", "t", True)]
    a2 = _open(server, "/rooms/a", subs=["t"])
    assert len(broker.interests()) == 2  # not the first subscriber: nothing new
    b1 = _open(server, "/rooms/b", subs=["t", "u"])
    assert broker.interests()[2:] == [("/rooms/b", "t", True), (None, "u", True), ("/rooms/b", "u", True)]

    a1.close()
    assert wait_until(lambda: len(server.peers) == 2)
    assert len(broker.interests()) == 5  # a2 still holds /rooms/a

    _cmd(a2, op="unsub", topic="t")  # the last /rooms/a subscriber leaves by unsubscribing
    assert broker.interests()[5:] == [("/rooms/a", "t", False)]
    _cmd(a2, op="unsub", topic="t")  # unsubscribing again changes nothing
    assert len(broker.interests()) == 6
    _cmd(a2, op="sub", topic="t")  # and back
    assert broker.interests()[6:] == [("/rooms/a", "t", True)]

    b1.close()  # disconnect drops every topic of the peer
    assert wait_until(lambda: len(broker.interests()) == 10)
    assert sorted(broker.interests()[7:], key=str) == sorted(
        [("/rooms/b", "t", False), ("/rooms/b", "u", False), (None, "u", False)], key=str
    )
    a2.close()
    assert wait_until(lambda: len(broker.interests()) == 12)
    assert broker.interests()[10:] == [("/rooms/a", "t", False), (None, "t", False)]
    assert server.registry.interests() == []


def test_interest_follows_sse_streams(start_server):
    broker = RecordingBroker()
    server = start_server(broker_app, broker=broker)

    def open_stream(ns):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(f"GET /events?topic=feed&ns={ns} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = b""
        while b"event: ready" not in data:
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        return sock

    s1 = open_stream("/rooms/feeds")
    assert broker.interests() == [(None, "feed", True), ("/rooms/feeds", "feed", True)]
    peer = _open(server, "/rooms/feeds", subs=["feed"])  # a peer in the same namespace: no new interest
    assert len(broker.interests()) == 2
    s1.close()
    assert wait_until(lambda: not server.streams)
    assert len(broker.interests()) == 2
    peer.close()
    assert wait_until(lambda: len(broker.interests()) == 4)
    assert broker.interests()[2:] == [("/rooms/feeds", "feed", False), (None, "feed", False)]


def test_local_broker_keeps_pubsub_in_process(start_server, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    server = start_server(broker_app)
    assert type(server.broker) is LocalBroker
    sender = _open(server, "/rooms/a", subs=["t"])
    listener = _open(server, "/rooms/a", subs=["t"])
    _cmd(sender, op="pub", topic="t", data="local", ack=False)
    assert listener.recv() == "local"
    server.publish("t", "from server")
    assert listener.recv() == "from server"
    assert sender.recv() == "from server"  # server.publish excludes nobody


# -- commands (server.disconnect, server.unsubscribe) ---------------------------------------


def test_command_round_trip():
    from syncws.pubsub.broker import command_channel, decode_command, encode_command

    data = encode_command("o1", "unsubscribe", user="ann", topic="room", namespace=None)
    assert decode_command(data) == {
        "v": 1,
        "o": "o1",
        "op": "unsubscribe",
        "user": "ann",
        "topic": "room",
        "namespace": None,
    }
    assert command_channel("app") == "{app}:cmd"


@pytest.mark.parametrize(
    "wire",
    [
        b"not json",
        b"[]",
        b'{"v": 2, "o": "x", "op": "disconnect", "user": "a"}',
        b'{"v": 1, "o": "x", "op": "explode", "user": "a"}',
        b'{"v": 1, "op": "disconnect", "user": "a"}',
        b'{"v": 1, "o": "x", "op": "disconnect", "user": 5}',
    ],
)
def test_malformed_commands_raise_value_error(wire):
    from syncws.pubsub.broker import decode_command

    with pytest.raises(ValueError):
        decode_command(wire)


def test_the_local_broker_sends_commands_nowhere():
    from syncws.pubsub.broker import LocalBroker

    assert LocalBroker().command({"op": "disconnect", "user": "a"}) is None
