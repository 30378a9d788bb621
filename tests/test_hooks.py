"""Hooks over real sockets: order, the accepted forms, and the upgrade decision.

Hooks run in the server's thread, so they only *record* what they see (lists
appended from the hook, read here with ``wait_until``); every assertion is made
in the test thread.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import threading

import gevent
import pytest
import websocket
from werkzeug.exceptions import abort
from werkzeug.wrappers import Request, Response

from syncws import App, define_websocket_handler

from .conftest import connect, wait_until

UPGRADE_HEADERS = (
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Version: 13\r\n"
)


def upgrade_request(server, path: str = "/_ws", extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    head = (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n"
        f"{UPGRADE_HEADERS}"
        f"Sec-WebSocket-Key: {key}\r\n"
        f"{extra}"
        "\r\n"
    )
    return http_exchange(server, head.encode("latin-1"))


def http_exchange(server, data: bytes, timeout: float = 5.0) -> bytes:
    """Send a raw request; return the response head and its Content-Length body.

    Falls back to reading until the server closes or idles (conftest's
    ``raw_request``) when the response has no Content-Length.
    """
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return buf
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        if head.startswith(b"HTTP/1.1 101"):
            return buf
        match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
        if match is None:
            sock.settimeout(0.5)
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            except socket.timeout:
                pass
            return buf
        length = int(match.group(1))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body


def parse_http(raw: bytes) -> tuple[int, dict, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        decoded = b""
        rest = body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            decoded += rest[:size]
            rest = rest[size + 2 :]
        body = decoded
    return status, headers, body


def echo_app(**hooks) -> App:
    app = App()
    app.get("/_ws", define_websocket_handler(**hooks))
    return app


# -- order -------------------------------------------------------------------


def test_hooks_run_in_order_upgrade_open_messages_close(start_server):
    events: list = []
    holder: dict = {}

    def upgrade(request):
        events.append(("upgrade", request.path))

    def open_(peer):
        holder["server"] = peer.server
        events.append(("open", peer.id, peer in peer.server.peers, peer in peer.peers))

    def message(peer, msg):
        events.append(("message", msg.text(), peer in peer.server.peers))
        peer.send(msg)

    def close(peer, details):
        events.append(
            ("close", peer.id, peer in peer.server.peers, peer in peer.peers, details.code, details.reason)
        )

    server = start_server(echo_app(upgrade=upgrade, open=open_, message=message, close=close))
    client = connect(server)
    for text in ("one", "two", "three"):
        client.send(text)
    assert [client.recv() for _ in range(3)] == ["one", "two", "three"]
    client.close(1000, "done")
    assert wait_until(lambda: any(e[0] == "close" for e in events))

    names = [e[0] for e in events]
    assert names == ["upgrade", "open", "message", "message", "message", "close"]
    assert events[0] == ("upgrade", "/_ws")
    peer_id = events[1][1]
    # While open the peer is registered, both server-wide and in its namespace.
    assert events[1][2:] == (True, True)
    assert [e[1] for e in events[2:5]] == ["one", "two", "three"]
    assert all(e[2] for e in events[2:5])
    # The close hook runs after the peer left: neither server.peers nor peer.peers has it.
    assert events[5] == ("close", peer_id, False, False, 1000, "done")
    assert holder["server"] is server


def test_close_hook_runs_exactly_once(start_server):
    closes: list = []
    server = start_server(echo_app(close=lambda peer, details: closes.append(peer.id)))
    client = connect(server)
    client.close()
    assert wait_until(lambda: closes)
    # Give a second (buggy) invocation a chance to show up, bounded by an HTTP round-trip.
    assert upgrade_request(server, "/missing").startswith(b"HTTP/1.1 404")
    assert len(closes) == 1
    assert not server.peers


def test_hooks_of_one_peer_run_one_at_a_time_in_order(start_server):
    received: list = []
    overlaps: list = []
    state = {"in_hook": False}

    def message(peer, msg):
        if state["in_hook"]:
            overlaps.append(msg.text())
        state["in_hook"] = True
        try:
            gevent.sleep(0.001)  # force a switch: another hook of this peer must not start now
            received.append(int(msg.text()))
        finally:
            state["in_hook"] = False
        if len(received) == 100:
            peer.send("done")

    server = start_server(echo_app(message=message))
    client = connect(server)
    for i in range(100):
        client.send(str(i))
    assert client.recv() == "done"
    assert received == list(range(100))
    assert overlaps == []
    client.close()


def test_hooks_of_different_peers_may_interleave_but_each_stays_ordered(start_server):
    per_peer: dict = {}

    def message(peer, msg):
        gevent.sleep(0)
        per_peer.setdefault(peer.id, []).append(int(msg.text()))
        if len(per_peer[peer.id]) == 50:
            peer.send("done")

    server = start_server(echo_app(message=message))
    clients = [connect(server) for _ in range(4)]

    def blast(client):
        for i in range(50):
            client.send(str(i))

    threads = [threading.Thread(target=blast, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    for client in clients:
        assert client.recv() == "done"
        client.close()
    assert len(per_peer) == 4
    assert all(seq == list(range(50)) for seq in per_peer.values())


# -- hook forms --------------------------------------------------------------


def _recording_hooks(events: list):
    def open_(peer):
        events.append("open")

    def message(peer, msg):
        events.append(f"message:{msg}")
        peer.send(f"echo:{msg}")

    def close(peer, details):
        events.append(f"close:{details.code}")

    return {"open": open_, "message": message, "close": close}


class _HookObject:
    def __init__(self, events):
        self.events = events

    def open(self, peer):
        self.events.append("open")

    def message(self, peer, msg):
        self.events.append(f"message:{msg}")
        peer.send(f"echo:{msg}")

    def close(self, peer, details):
        self.events.append(f"close:{details.code}")


def _exercise(server) -> None:
    client = connect(server)
    client.send("hi")
    assert client.recv() == "echo:hi"
    client.close(4000)


@pytest.mark.parametrize("form", ["keywords", "mapping", "object"])
def test_hook_forms(start_server, form):
    events: list = []
    if form == "keywords":
        handler = define_websocket_handler(**_recording_hooks(events))
    elif form == "mapping":
        handler = define_websocket_handler(_recording_hooks(events))
    else:
        handler = define_websocket_handler(_HookObject(events))
    app = App()
    app.get("/_ws", handler)
    server = start_server(app)
    _exercise(server)
    assert wait_until(lambda: len(events) == 3)
    assert events == ["open", "message:hi", "close:4000"]


def test_hook_class_is_instantiated_by_syncws(start_server):
    seen: dict = {"instances": [], "selves": []}

    class ChatHooks:
        def __init__(self):
            seen["instances"].append(self)

        def open(self, peer):
            seen["selves"].append(self)

        def message(self, peer, msg):
            seen["selves"].append(self)
            peer.send(f"class:{msg}")

        def close(self, peer, details):
            seen["selves"].append(self)

        def helper(self):  # not a hook name: ignored
            raise AssertionError("never called")

    handler = define_websocket_handler(ChatHooks)
    assert len(seen["instances"]) == 1
    app = App()
    app.get("/_ws", handler)
    server = start_server(app)
    client = connect(server)
    client.send("x")
    assert client.recv() == "class:x"
    client.close()
    assert wait_until(lambda: len(seen["selves"]) == 3)
    instance = seen["instances"][0]
    assert isinstance(instance, ChatHooks)
    assert all(s is instance for s in seen["selves"])
    # One instance for the handler, not one per connection.
    client2 = connect(server)
    client2.close()
    assert wait_until(lambda: len(seen["selves"]) == 5)
    assert len(seen["instances"]) == 1


def test_all_hooks_are_optional(start_server):
    server = start_server(echo_app())
    client = connect(server)
    client.send("ignored")
    client.ping(b"p")
    opcode, frame = client.recv_data_frame(True)
    assert opcode == websocket.ABNF.OPCODE_PONG and frame.data == b"p"
    assert wait_until(lambda: len(server.peers) == 1)
    client.close()
    assert wait_until(lambda: not server.peers)


def test_keyword_hooks_override_mapping(start_server):
    events: list = []
    handler = define_websocket_handler(
        {"message": lambda peer, msg: peer.send("from mapping")},
        message=lambda peer, msg: peer.send("from keyword"),
        open=lambda peer: events.append("open"),
    )
    app = App()
    app.get("/_ws", handler)
    server = start_server(app)
    client = connect(server)
    client.send("x")
    assert client.recv() == "from keyword"
    assert events == ["open"]
    client.close()


@pytest.mark.parametrize(
    "build",
    [
        lambda: define_websocket_handler(opne=lambda peer: None),
        lambda: define_websocket_handler(on_message=lambda peer, msg: None),
        lambda: define_websocket_handler({"opne": lambda peer: None}),
        lambda: define_websocket_handler(open=3),
        lambda: define_websocket_handler(message="not callable"),
        lambda: define_websocket_handler({"close": 42}),
        lambda: define_websocket_handler(type("H", (), {"open": 5})),
        lambda: define_websocket_handler(type("H", (), {"error": "x"})()),
    ],
    ids=[
        "unknown-keyword",
        "unknown-keyword-prefixed",
        "unknown-mapping-key",
        "non-callable-keyword",
        "non-callable-str",
        "non-callable-mapping",
        "non-callable-class-attr",
        "non-callable-object-attr",
    ],
)
def test_bad_hooks_raise_type_error(build):
    with pytest.raises(TypeError):
        build()


# -- upgrade: rejection ------------------------------------------------------


def _reject_return(request):
    return Response("nope", 401, headers={"X-Why": "token"})


def _reject_abort_response(request):
    abort(Response("nope", 401, headers={"X-Why": "token"}))


@pytest.mark.parametrize("upgrade", [_reject_return, _reject_abort_response], ids=["return", "abort-response"])
def test_upgrade_rejection_sends_that_response(start_server, upgrade):
    opened: list = []
    server = start_server(echo_app(upgrade=upgrade, open=lambda peer: opened.append(peer)))

    raw = upgrade_request(server)
    assert not raw.startswith(b"HTTP/1.1 101")
    assert b"101 Switching" not in raw
    status, headers, body = parse_http(raw)
    assert status == 401
    assert headers.get("x-why") == "token"
    assert body == b"nope"
    assert "sec-websocket-accept" not in headers

    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        connect(server)
    assert info.value.status_code == 401
    assert info.value.resp_headers.get("x-why") == "token"
    assert info.value.resp_body == b"nope"

    assert opened == []
    assert not server.peers


def test_upgrade_rejection_with_abort_status(start_server):
    opened: list = []

    def upgrade(request):
        if request.args.get("token") != "secret":
            abort(401)

    server = start_server(echo_app(upgrade=upgrade, open=lambda peer: opened.append(peer)))
    raw = upgrade_request(server, "/_ws?token=wrong")
    status, headers, body = parse_http(raw)
    assert status == 401
    assert b"101 Switching" not in raw
    assert "sec-websocket-accept" not in headers
    assert b"Unauthorized" in body

    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        connect(server)
    assert info.value.status_code == 401
    assert opened == []

    # The right token is accepted on the same server.
    client = connect(server, "/_ws?token=secret")
    assert wait_until(lambda: len(opened) == 1)
    client.close()


def test_upgrade_rejection_with_other_status_and_requests(start_server):
    import requests

    def upgrade(request):
        return Response("go away", 403, headers={"X-Reason": "banned"})

    server = start_server(echo_app(upgrade=upgrade))
    reply = requests.get(
        server.url + "/_ws",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        },
        timeout=5,
    )
    assert reply.status_code == 403
    assert reply.text == "go away"
    assert reply.headers["X-Reason"] == "banned"


def test_upgrade_hook_exception_answers_500_without_101(start_server):
    opened: list = []

    def upgrade(request):
        raise RuntimeError("boom")

    server = start_server(echo_app(upgrade=upgrade, open=lambda peer: opened.append(1)))
    raw = upgrade_request(server)
    status, headers, _ = parse_http(raw)
    assert status == 500
    assert b"101 Switching" not in raw
    assert opened == []
    # The server is still fine.
    assert parse_http(upgrade_request(server, "/nowhere"))[0] == 404


# -- upgrade: acceptance options ---------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Extra": "yes", "X-Second": "2"},
        [("X-Extra", "yes"), ("X-Second", "2")],
    ],
    ids=["dict", "pairs"],
)
def test_upgrade_extra_headers_on_101(start_server, headers):
    server = start_server(echo_app(upgrade=lambda request: {"headers": headers}))
    client = connect(server)
    got = {k.lower(): v for k, v in client.getheaders().items()}
    assert client.getstatus() == 101
    assert got["x-extra"] == "yes"
    assert got["x-second"] == "2"
    client.close()

    raw = upgrade_request(server)
    assert raw.startswith(b"HTTP/1.1 101")
    status, head, _ = parse_http(raw)
    assert head["x-extra"] == "yes" and head["x-second"] == "2"


def test_upgrade_chooses_subprotocol(start_server):
    seen: list = []

    def upgrade(request):
        seen.append(request.headers.get("Sec-WebSocket-Protocol"))
        return {"protocol": "chat.v2"}

    server = start_server(
        echo_app(upgrade=upgrade, open=lambda peer: seen.append(peer.websocket.protocol))
    )
    client = connect(server, subprotocols=["chat.v1", "chat.v2"])
    assert client.getsubprotocol() == "chat.v2"
    assert wait_until(lambda: len(seen) == 2)
    assert seen[0].replace(" ", "") == "chat.v1,chat.v2"
    assert seen[1] == "chat.v2"
    client.close()


def test_without_protocol_choice_no_subprotocol_is_sent(start_server):
    server = start_server(echo_app())
    raw = upgrade_request(server, extra="Sec-WebSocket-Protocol: chat.v1\r\n")
    status, headers, _ = parse_http(raw)
    assert status == 101
    assert "sec-websocket-protocol" not in headers


def test_upgrade_choosing_a_protocol_not_offered_fails_with_500(start_server):
    opened: list = []
    server = start_server(
        echo_app(upgrade=lambda request: {"protocol": "chat.v3"}, open=lambda peer: opened.append(1))
    )
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        connect(server, subprotocols=["chat.v1", "chat.v2"])
    assert info.value.status_code == 500

    raw = upgrade_request(server, extra="Sec-WebSocket-Protocol: chat.v1\r\n")
    assert parse_http(raw)[0] == 500
    assert b"101 Switching" not in raw
    assert opened == []


def test_upgrade_context_is_merged_into_peer_context(start_server):
    seen: list = []

    def upgrade(request):
        return {"context": {"user": request.args["user"], "role": "admin"}}

    def open_(peer):
        seen.append(dict(peer.context))
        peer.context["count"] = 0

    def message(peer, msg):
        peer.context["count"] += 1
        peer.send(f"{peer.context['user']}:{peer.context['count']}")

    server = start_server(echo_app(upgrade=upgrade, open=open_, message=message))
    client = connect(server, "/_ws?user=alice")
    client.send("a")
    assert client.recv() == "alice:1"
    client.send("b")
    assert client.recv() == "alice:2"
    assert seen == [{"user": "alice", "role": "admin"}]
    client.close()


def test_default_context_is_an_empty_dict(start_server):
    seen: list = []
    server = start_server(echo_app(open=lambda peer: seen.append(peer.context)))
    client = connect(server)
    assert wait_until(lambda: seen)
    assert seen[0] == {} and isinstance(seen[0], dict)
    client.close()


def test_upgrade_namespace_override(start_server):
    seen: list = []
    server = start_server(
        echo_app(upgrade=lambda request: {"namespace": "custom"}, open=lambda peer: seen.append(peer.namespace))
    )
    client = connect(server, "/_ws?x=1")
    assert wait_until(lambda: seen)
    assert seen == ["custom"]
    client.close()


def test_default_namespace_is_the_path_without_query(start_server):
    seen: list = []
    app = App()
    app.get("/rooms/<room>", define_websocket_handler(open=lambda peer: seen.append(peer.namespace)))
    server = start_server(app)
    client = connect(server, "/rooms/game?x=1&y=2")
    assert wait_until(lambda: seen)
    assert seen == ["/rooms/game"]
    client.close()


def test_upgrade_request_is_a_werkzeug_request(start_server):
    seen: list = []

    def upgrade(request):
        seen.append(
            (
                isinstance(request, Request),
                request.path,
                request.args.get("q"),
                request.headers.get("X-Custom"),
                request.cookies.get("session"),
            )
        )

    server = start_server(echo_app(upgrade=upgrade))
    client = connect(server, "/_ws?q=42", header=["X-Custom: hello"], cookie="session=abc")
    assert seen == [(True, "/_ws", "42", "hello", "abc")]
    client.close()


@pytest.mark.parametrize(
    "decision",
    [{"bogus": 1}, "yes", 42, {"context": "not a dict"}],
    ids=["unknown-key", "str", "int", "bad-context"],
)
def test_upgrade_bad_return_value_rejects_with_500(start_server, decision):
    server = start_server(echo_app(upgrade=lambda request: decision))
    raw = upgrade_request(server)
    assert parse_http(raw)[0] == 500
    assert b"101 Switching" not in raw
    assert not server.peers


def test_non_upgrade_request_to_websocket_route_gets_426(start_server):
    opened: list = []
    server = start_server(echo_app(upgrade=lambda request: opened.append("upgrade"), open=lambda p: opened.append(1)))
    raw = http_exchange(server, f"GET /_ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nConnection: close\r\n\r\n".encode())
    status, headers, _ = parse_http(raw)
    assert status == 426
    assert opened == []


def test_socket_sees_101_then_frames_only(start_server):
    """After the handshake the socket carries WebSocket frames and nothing else."""
    server = start_server(echo_app(open=lambda peer: peer.send("hello")))
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            (
                f"GET /_ws HTTP/1.1\r\nHost: x\r\n{UPGRADE_HEADERS}Sec-WebSocket-Key: {key}\r\n\r\n"
            ).encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            assert chunk
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        while len(rest) < 7:
            rest += sock.recv(4096)
        assert rest[:7] == b"\x81\x05hello"
