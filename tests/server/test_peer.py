"""The Peer and Message objects as a hook sees them, over real connections."""

from __future__ import annotations

import json
import queue
import socket
import threading
import uuid

import pytest
from websocket import ABNF
from werkzeug.wrappers import Request

from syncws import ConfigurationError, Message
from syncws.protocol import OP_BINARY, OP_TEXT

from ..conftest import connect, wait_until
from ..support import RawClient, app_with, recv_close

TEXT, BINARY = ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY


# -- peer members ------------------------------------------------------------


def test_peer_identity_and_request(start_server):
    seen: queue.Queue = queue.Queue()

    def open_(peer):
        req = peer.request
        seen.put(
            {
                "peer": peer,
                "id": peer.id,
                "str": str(peer),
                "namespace": peer.namespace,
                "remote": peer.remote_address,
                "server": peer.server,
                "is_request": isinstance(req, Request),
                "path": req.path,
                "args": req.args.to_dict(),
                "header": req.headers.get("X-Token"),
                "cookies": dict(req.cookies),
                "websocket": peer.websocket is not None,
            }
        )

    server = start_server(app_with(open=open_))
    client = connect(server, "/_ws?room=7&user=bob", header=["X-Token: t0k"], cookie="sid=s1; theme=dark")
    info = seen.get(timeout=5)
    assert uuid.UUID(info["id"]).version == 4
    assert str(uuid.UUID(info["id"])) == info["id"]
    assert info["str"] == info["id"]
    assert info["namespace"] == "/_ws"
    assert info["remote"] == "127.0.0.1"
    assert info["server"] is server
    assert info["is_request"]
    assert info["path"] == "/_ws"
    assert info["args"] == {"room": "7", "user": "bob"}
    assert info["header"] == "t0k"
    assert info["cookies"] == {"sid": "s1", "theme": "dark"}
    assert info["websocket"]
    client.close()


def test_peer_id_is_made_once_even_when_threads_ask_first_together(start_server):
    # The id is made on first use; OS threads racing for it must all get the same one.
    peers: queue.Queue = queue.Queue()
    server = start_server(app_with(open=peers.put))
    client = connect(server, "/_ws")
    peer = peers.get(timeout=5)
    assert peer._id is None  # nobody asked yet: no uuid made
    barrier = threading.Barrier(8)
    ids: list = []

    def read() -> None:
        barrier.wait()
        ids.append(peer.id)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(ids) == 8 and len(set(ids)) == 1
    assert peer.id == ids[0] == str(peer)
    client.close()


def test_peer_ids_are_unique(start_server):
    ids: list = []
    server = start_server(app_with(open=lambda peer: ids.append(peer.id)))
    clients = [connect(server) for _ in range(20)]
    assert wait_until(lambda: len(ids) == 20)
    assert len(set(ids)) == 20
    for c in clients:
        c.close()


def test_peer_peers_is_same_namespace_and_includes_itself(start_server):
    def message(peer, msg):
        peer.send(json.dumps({"me": peer.id, "peers": sorted(p.id for p in peer.peers)}))

    server = start_server(app_with("/rooms/<room>", message=message))
    game = [connect(server, "/rooms/game") for _ in range(3)]
    lobby = [connect(server, "/rooms/lobby") for _ in range(2)]
    assert wait_until(lambda: len(server.peers) == 5)

    def ask(client):
        client.send("who")
        return json.loads(client.recv())

    game_views = [ask(c) for c in game]
    lobby_views = [ask(c) for c in lobby]
    game_ids = {v["me"] for v in game_views}
    lobby_ids = {v["me"] for v in lobby_views}
    assert len(game_ids) == 3 and len(lobby_ids) == 2
    for view in game_views:
        assert set(view["peers"]) == game_ids
        assert view["me"] in view["peers"]
    for view in lobby_views:
        assert set(view["peers"]) == lobby_ids
    assert {p.id for p in server.peers} == game_ids | lobby_ids

    # A peer that leaves is no longer among its namespace's peers.
    game[0].close()
    assert wait_until(lambda: len(server.peers) == 4)
    assert set(ask(game[1])["peers"]) == game_ids - {game_views[0]["me"]}
    for c in game[1:] + lobby:
        c.close()


def test_peer_peers_is_a_snapshot(start_server):
    snapshots: list = []

    def open_(peer):
        snapshots.append(peer.peers)

    server = start_server(app_with(open=open_))
    a = connect(server)
    assert wait_until(lambda: len(snapshots) == 1)
    b = connect(server)
    assert wait_until(lambda: len(snapshots) == 2)
    assert len(snapshots[0]) == 1  # taken before b arrived, not a live view
    assert len(snapshots[1]) == 2
    a.close()
    b.close()


def test_peer_topics_follow_subscribe_and_unsubscribe(start_server):
    def message(peer, msg):
        op, _, topic = msg.text().partition(":")
        if op == "sub":
            peer.subscribe(topic)
        elif op == "unsub":
            peer.unsubscribe(topic)
        peer.send(sorted(peer.topics))

    server = start_server(app_with(message=message))
    client = connect(server)

    def do(cmd):
        client.send(cmd)
        return json.loads(client.recv())

    assert do("list:") == []
    assert do("sub:a") == ["a"]
    assert do("sub:b") == ["a", "b"]
    assert do("sub:a") == ["a", "b"]  # idempotent
    assert do("unsub:a") == ["b"]
    assert do("unsub:zzz") == ["b"]  # unknown topic: no error
    assert do("unsub:b") == []
    client.close()


def test_peer_send_from_another_thread(start_server):
    peers: queue.Queue = queue.Queue()
    server = start_server(app_with(open=peers.put))
    client = connect(server)
    peer = peers.get(timeout=5)
    errors: list = []

    def worker():
        try:
            for i in range(20):
                peer.send(f"thread {i}")
            peer.send({"done": True})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join(5)
    assert errors == []
    assert [client.recv() for _ in range(21)] == [f"thread {i}" for i in range(20)] + ['{"done":true}']
    client.close()


def test_peer_close_from_another_thread(start_server):
    peers: queue.Queue = queue.Queue()
    closes: queue.Queue = queue.Queue()
    server = start_server(app_with(open=peers.put, close=lambda p, d: closes.put((d.code, d.reason))))
    client = connect(server)
    peer = peers.get(timeout=5)
    threading.Thread(target=peer.close, args=(4100, "from thread")).start()
    assert recv_close(client) == (4100, "from thread")
    assert closes.get(timeout=5) == (4100, "from thread")


def test_a_bad_close_raises_in_the_callers_thread_and_send_says_when_the_peer_is_gone(start_server):
    """Issue 21: peer.close(999) raised in a hook but only logged from an OS thread; send was a silent no-op."""
    peers: queue.Queue = queue.Queue()
    server = start_server(app_with(open=peers.put))
    client = connect(server)
    peer = peers.get(timeout=5)
    outcome: queue.Queue = queue.Queue()

    def from_a_thread():
        for bad in ((999, ""), (1005, ""), (1000, b"bytes")):
            try:
                peer.close(*bad)
            except ValueError as exc:
                outcome.put(str(exc))
        outcome.put(peer.send("still open"))

    threading.Thread(target=from_a_thread).start()
    assert outcome.get(timeout=5).startswith("invalid close code 999")
    assert outcome.get(timeout=5).startswith("invalid close code 1005")
    assert outcome.get(timeout=5) == "a close reason is a str, not bytes"
    assert outcome.get(timeout=5) is True
    assert client.recv() == "still open"
    peer.close(4000, "bye")
    assert recv_close(client) == (4000, "bye")
    assert wait_until(lambda: peer.closed)
    assert peer.send("too late") is False


# -- payloads ----------------------------------------------------------------

PAYLOADS = {
    "str": ("hello ✓", TEXT, "hello ✓".encode()),
    "empty-str": ("", TEXT, b""),
    "bytes": (b"\x00\x01\xff", BINARY, b"\x00\x01\xff"),
    "bytearray": (bytearray(b"ba\x00"), BINARY, b"ba\x00"),
    "memoryview": (memoryview(b"mv\x80"), BINARY, b"mv\x80"),
    "empty-bytes": (b"", BINARY, b""),
    "dict": ({"a": 1, "b": [1, 2]}, TEXT, b'{"a":1,"b":[1,2]}'),
    "list": ([1, "x", None, True], TEXT, b'[1,"x",null,true]'),
    "non-ascii": ({"msg": "héllo ✓"}, TEXT, '{"msg":"héllo ✓"}'.encode()),
    "nested": ({"a": {"b": {"c": []}}}, TEXT, b'{"a":{"b":{"c":[]}}}'),
    "none": (None, TEXT, b""),
    "true": (True, TEXT, b"true"),
    "false": (False, TEXT, b"false"),
    "int": (3, TEXT, b"3"),
    "zero": (0, TEXT, b"0"),
    "negative": (-12, TEXT, b"-12"),
    "float": (1.5, TEXT, b"1.5"),
}


@pytest.fixture
def payload_server(start_server):
    errors: list = []

    def message(peer, msg):
        value = PAYLOADS[msg.text()][0]
        peer.send(value)

    server = start_server(app_with(message=message, error=lambda peer, exc: errors.append(exc)))
    server.test_errors = errors
    return server


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_send_payload_types(payload_server, name):
    _, opcode, data = PAYLOADS[name]
    client = connect(payload_server)
    client.send(name)
    got_opcode, got = client.recv_data()
    assert (got_opcode, bytes(got)) == (opcode, data)
    # The connection is still healthy afterwards.
    client.send("str")
    assert client.recv() == "hello ✓"
    client.close()
    assert payload_server.test_errors == []


def test_publish_uses_the_same_payload_rules(start_server):
    def open_(peer):
        peer.subscribe("t")

    def message(peer, msg):
        for name in ("dict", "bytes", "none", "true", "float", "non-ascii"):
            peer.publish("t", PAYLOADS[name][0])
        peer.server.publish("t", [1, 2])

    server = start_server(app_with(open=open_, message=message))
    listener = connect(server)
    sender = connect(server)
    assert wait_until(lambda: len(server.registry.subscribers("t")) == 2)
    sender.send("go")
    got = [listener.recv_data() for _ in range(7)]
    expected = [PAYLOADS[n][1:] for n in ("dict", "bytes", "none", "true", "float", "non-ascii")]
    expected.append((TEXT, b"[1,2]"))
    assert [(op, bytes(d)) for op, d in got] == expected
    listener.close()
    sender.close()


def test_sending_an_unsupported_object_raises_type_error_in_the_hook(start_server):
    raised: queue.Queue = queue.Queue()
    errors: queue.Queue = queue.Queue()

    def message(peer, msg):
        if msg.text() == "catch":
            try:
                peer.send(object())
            except TypeError as exc:
                raised.put(exc)
            peer.send("still open")
        else:
            peer.send(object())  # not caught: the error hook sees it

    server = start_server(app_with(message=message, error=lambda peer, exc: errors.put(exc)))
    client = connect(server)
    client.send("catch")
    assert client.recv() == "still open"
    assert isinstance(raised.get(timeout=5), TypeError)

    client.send("uncaught")
    assert recv_close(client)[0] == 1011
    assert isinstance(errors.get(timeout=5), TypeError)
    assert errors.empty()


@pytest.mark.parametrize(
    "opcode,payload",
    [(TEXT, "plain text ✓".encode()), (BINARY, b"\x00\x01binary\xff"), (BINARY, b""), (TEXT, b"")],
    ids=["text", "binary", "empty-binary", "empty-text"],
)
def test_echoing_a_message_keeps_its_type(start_server, opcode, payload):
    server = start_server(app_with(message=lambda peer, msg: peer.send(msg)))
    client = connect(server)
    client.send(payload, opcode=opcode)
    got_opcode, got = client.recv_data()
    assert got_opcode == opcode
    assert bytes(got) == payload
    client.close()


def test_large_message_roundtrip(start_server):
    server = start_server(app_with(message=lambda peer, msg: peer.send(msg)))
    client = connect(server)
    payload = bytes(range(256)) * 2048  # 512 KiB, binary, crosses every length encoding
    client.send_binary(payload)
    opcode, got = client.recv_data()
    assert opcode == BINARY and got == payload
    client.close()


# -- Message API -------------------------------------------------------------


def _describe(msg: Message) -> dict:
    info = {
        "type": type(msg).__name__,
        "is_binary": msg.is_binary,
        "raw_data": msg.raw_data,
        "bytes": msg.bytes(),
        "uint8_array": bytes(msg.uint8_array()),
        "array_buffer": bytes(msg.array_buffer()),
        "blob": msg.blob().read(),
    }
    if not msg.is_binary:
        info["text"] = msg.text()
        info["str"] = str(msg)
    return info


def test_message_api_on_text(start_server):
    seen: queue.Queue = queue.Queue()
    server = start_server(app_with(message=lambda peer, msg: seen.put(_describe(msg))))
    client = connect(server)
    text = "héllo wörld ✓"
    client.send(text)
    info = seen.get(timeout=5)
    raw = text.encode("utf-8")
    assert info == {
        "type": "Message",
        "is_binary": False,
        "raw_data": text,
        "bytes": raw,
        "uint8_array": raw,
        "array_buffer": raw,
        "blob": raw,
        "text": text,
        "str": text,
    }
    client.close()


def test_message_api_on_binary(start_server):
    seen: queue.Queue = queue.Queue()
    server = start_server(app_with(message=lambda peer, msg: seen.put(_describe(msg))))
    client = connect(server)
    raw = b"\x00\x01\x02\xfe\xff"
    client.send_binary(raw)
    info = seen.get(timeout=5)
    assert info["is_binary"] is True
    assert info["raw_data"] == raw and isinstance(info["raw_data"], bytes)
    assert info["bytes"] == raw
    assert info["uint8_array"] == raw
    assert info["array_buffer"] == raw
    assert info["blob"] == raw
    client.close()


def test_message_text_of_binary_utf8_payload(start_server):
    seen: queue.Queue = queue.Queue()
    server = start_server(app_with(message=lambda peer, msg: seen.put((msg.text(), str(msg), msg.json()))))
    client = connect(server)
    client.send_binary('{"k":"✓"}'.encode())
    assert seen.get(timeout=5) == ('{"k":"✓"}', '{"k":"✓"}', {"k": "✓"})
    client.close()


def test_message_json(start_server):
    seen: queue.Queue = queue.Queue()
    server = start_server(app_with(message=lambda peer, msg: seen.put(msg.json())))
    client = connect(server)
    client.send('{"a": 1, "b": [true, null, "é"]}')
    assert seen.get(timeout=5) == {"a": 1, "b": [True, None, "é"]}
    client.send("[1,2,3]")
    assert seen.get(timeout=5) == [1, 2, 3]
    client.send("42")
    assert seen.get(timeout=5) == 42
    client.close()


def test_message_json_on_bad_json_goes_to_error_hook_and_closes_1011(start_server):
    errors: queue.Queue = queue.Queue()
    closes: queue.Queue = queue.Queue()
    parsed: list = []

    server = start_server(
        app_with(
            message=lambda peer, msg: parsed.append(msg.json()),
            error=lambda peer, exc: errors.put((peer.id, exc)),
            close=lambda peer, d: closes.put((peer.id, d.code)),
        )
    )
    client = connect(server)
    client.send('{"ok": true}')
    client.send("{not json")
    code, _ = recv_close(client)
    assert code == 1011
    peer_id, exc = errors.get(timeout=5)
    assert isinstance(exc, ValueError)
    assert parsed == [{"ok": True}]
    assert closes.get(timeout=5) == (peer_id, 1011)


def test_fragmented_message_is_delivered_once(start_server):
    seen: queue.Queue = queue.Queue()
    server = start_server(app_with(message=lambda peer, msg: seen.put((msg.is_binary, msg.bytes()))))
    client = connect(server)
    check = "✓".encode()  # 3 bytes, split across two fragments below
    client.send_frame(ABNF.create_frame(b"frag", TEXT, fin=0))
    client.send_frame(ABNF.create_frame(b"mented " + check[:1], ABNF.OPCODE_CONT, fin=0))
    client.ping(b"in between")
    client.send_frame(ABNF.create_frame(check[1:], ABNF.OPCODE_CONT, fin=1))
    assert seen.get(timeout=5) == (False, "fragmented ✓".encode())
    client.send("next")
    assert seen.get(timeout=5) == (False, b"next")
    client.close()


# -- ping, pong, drain and the connection's fields ----------------------------


def test_ping_and_pong_hooks_see_control_frames_and_peer_ping_sends_one(start_server):
    from syncws.protocol import OP_PING, OP_PONG

    seen: queue.Queue = queue.Queue()
    peers: queue.Queue = queue.Queue()
    server = start_server(
        app_with(
            open=peers.put,
            ping=lambda peer, data: seen.put(("ping", data)),
            pong=lambda peer, data: seen.put(("pong", data)),
        ),
        ping_interval=None,
    )
    with RawClient(server) as raw:
        peer = peers.get(timeout=5)
        raw.send_frame(OP_PING, b"are you there")
        assert raw.read_frame() == (OP_PONG, b"are you there")  # the server still answers itself
        assert seen.get(timeout=5) == ("ping", b"are you there")
        peer.ping(b"abc")
        assert raw.read_frame() == (OP_PING, b"abc")
        raw.send_frame(OP_PONG, b"abc")
        assert seen.get(timeout=5) == ("pong", b"abc")
        peer.ping("text is sent as UTF-8")
        assert raw.read_frame() == (OP_PING, b"text is sent as UTF-8")
        with pytest.raises(ConfigurationError):
            peer.ping(b"x" * 126)


def test_the_websocket_fields_say_url_protocol_extensions_and_ready_state(start_server):
    seen: queue.Queue = queue.Queue()

    def fields(peer):
        ws = peer.websocket
        return ws.url, ws.protocol, ws.extensions, ws.ready_state

    server = start_server(
        app_with(open=lambda peer: seen.put(fields(peer)), close=lambda peer, details: seen.put(fields(peer))),
        compression="deflate",
    )
    client = connect(server, "/_ws?room=1")
    url, protocol, extensions, state = seen.get(timeout=5)
    assert url == f"ws://127.0.0.1:{server.port}/_ws?room=1"
    assert (protocol, extensions, state) == ("", "", 1)  # websocket-client offers no extension
    client.close()
    assert seen.get(timeout=5)[3] == 3
    with RawClient(server, extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"):
        assert seen.get(timeout=5)[2] == "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"


def test_wait_for_drain_from_a_thread_and_the_drain_hook(start_server):
    peers: queue.Queue = queue.Queue()
    drained: queue.Queue = queue.Queue()
    server = start_server(app_with(open=peers.put, drain=drained.put), ping_interval=None, max_buffer_size=None)
    with RawClient(server, rcvbuf=4096) as raw:
        peer = peers.get(timeout=5)
        peer.websocket.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        chunk = b"x" * 65536
        for _ in range(40):  # 2.5 MiB for a client that is not reading yet
            peer.send(chunk)
        assert wait_until(lambda: peer.buffered_amount > 0)
        assert peer.wait_for_drain(timeout=0.3) is False  # nobody reads: times out
        assert drained.empty()
        for _ in range(40):
            assert raw.read_frame() == (OP_BINARY, chunk)
        assert peer.wait_for_drain(timeout=5) is True
        assert drained.get(timeout=5) is peer  # once the pushed-back buffer emptied
        peer.send(b"small")  # no push-back: no drain hook
        assert raw.read_frame() == (OP_BINARY, b"small")
        assert peer.wait_for_drain(threshold=0, timeout=5) is True
    assert wait_until(lambda: peer.closed)
    assert peer.wait_for_drain(timeout=0.1) is True  # closed counts as drained
    assert drained.empty()


def test_wait_for_drain_in_a_hook_paces_a_producer(start_server):
    results: queue.Queue = queue.Queue()

    def message(peer, message):
        for _ in range(20):
            peer.send(b"y" * 65536)
            results.put(peer.wait_for_drain(threshold=128 * 1024, timeout=5))

    server = start_server(app_with(message=message), ping_interval=None, max_buffer_size=None)
    with RawClient(server, rcvbuf=4096) as raw:
        raw.send_frame(OP_TEXT, b"go")
        for _ in range(20):
            assert raw.read_frame() == (OP_BINARY, b"y" * 65536)
        assert [results.get(timeout=5) for _ in range(20)] == [True] * 20


def test_a_peer_kept_after_its_close_answers_as_a_closed_one(start_server):
    # The ended session is freed when it ends; the peer keeps a closed stand-in.
    kept = []
    server = start_server(app_with(open=kept.append))
    client = connect(server, "/_ws?x=1")
    assert wait_until(lambda: kept)
    client.close()
    peer = kept[0]
    assert wait_until(lambda: peer.closed)
    assert wait_until(lambda: type(peer.websocket).__name__ == "_EndedSession")
    assert peer.send("late") is False
    assert peer.buffered_amount == 0
    assert peer.websocket.ready_state == 3
    assert peer.websocket.url == f"ws://127.0.0.1:{server.port}/_ws?x=1"
    peer.close(1000)  # nothing to do, no error
    assert peer.wait_for_drain(timeout=0.1) is True
