"""Hooks over real sockets: order, the accepted forms, and the upgrade decision.

Hooks run in the server's thread, so they only *record* what they see (lists
appended from the hook, read here with ``wait_until``); every assertion is made
in the test thread.
"""

from __future__ import annotations

import threading

import gevent
import pytest
import websocket
from werkzeug.exceptions import abort
from werkzeug.wrappers import Request, Response

from syncws import define_websocket_handler

from ..conftest import connect, wait_until
from ..support import RawClient, app_with, http_exchange, new_key, parse_response, upgrade_request


def try_upgrade(server, path: str = "/_ws", extra: str = "") -> bytes:
    """Send an upgrade request over a fresh socket; return the response (head and body)."""
    request = upgrade_request(path, key=new_key(), host=f"127.0.0.1:{server.port}", extra=extra)
    return http_exchange(server, request)


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
        events.append(("close", peer.id, peer in peer.server.peers, peer in peer.peers, details.code, details.reason))

    server = start_server(app_with(upgrade=upgrade, open=open_, message=message, close=close))
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
    server = start_server(app_with(close=lambda peer, details: closes.append(peer.id)))
    client = connect(server)
    client.close()
    assert wait_until(lambda: closes)
    # Give a second (buggy) invocation a chance to show up, bounded by an HTTP round-trip.
    assert try_upgrade(server, "/missing").startswith(b"HTTP/1.1 404")
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

    server = start_server(app_with(message=message))
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

    server = start_server(app_with(message=message))
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
    server = start_server(app_with(handler=handler))
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
    server = start_server(app_with(handler=handler))
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
    server = start_server(app_with())
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
    server = start_server(app_with(handler=handler))
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
    server = start_server(app_with(upgrade=upgrade, open=lambda peer: opened.append(peer)))

    raw = try_upgrade(server)
    assert not raw.startswith(b"HTTP/1.1 101")
    assert b"101 Switching" not in raw
    status, headers, body = parse_response(raw)
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

    server = start_server(app_with(upgrade=upgrade, open=lambda peer: opened.append(peer)))
    raw = try_upgrade(server, "/_ws?token=wrong")
    status, headers, body = parse_response(raw)
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

    server = start_server(app_with(upgrade=upgrade))
    reply = requests.get(
        server.url + "/_ws",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": new_key(),
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

    server = start_server(app_with(upgrade=upgrade, open=lambda peer: opened.append(1)))
    raw = try_upgrade(server)
    status, _headers, _ = parse_response(raw)
    assert status == 500
    assert b"101 Switching" not in raw
    assert opened == []
    # The server is still fine.
    assert parse_response(try_upgrade(server, "/nowhere"))[0] == 404


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
    server = start_server(app_with(upgrade=lambda request: {"headers": headers}))
    client = connect(server)
    got = {k.lower(): v for k, v in client.getheaders().items()}
    assert client.getstatus() == 101
    assert got["x-extra"] == "yes"
    assert got["x-second"] == "2"
    client.close()

    raw = try_upgrade(server)
    assert raw.startswith(b"HTTP/1.1 101")
    _status, head, _ = parse_response(raw)
    assert head["x-extra"] == "yes" and head["x-second"] == "2"


def test_upgrade_chooses_subprotocol(start_server):
    seen: list = []

    def upgrade(request):
        seen.append(request.headers.get("Sec-WebSocket-Protocol"))
        return {"protocol": "chat.v2"}

    server = start_server(app_with(upgrade=upgrade, open=lambda peer: seen.append(peer.websocket.protocol)))
    client = connect(server, subprotocols=["chat.v1", "chat.v2"])
    assert client.getsubprotocol() == "chat.v2"
    assert wait_until(lambda: len(seen) == 2)
    assert seen[0].replace(" ", "") == "chat.v1,chat.v2"
    assert seen[1] == "chat.v2"
    client.close()


def test_without_protocol_choice_no_subprotocol_is_sent(start_server):
    server = start_server(app_with())
    raw = try_upgrade(server, extra="Sec-WebSocket-Protocol: chat.v1\r\n")
    status, headers, _ = parse_response(raw)
    assert status == 101
    assert "sec-websocket-protocol" not in headers


def test_upgrade_choosing_a_protocol_not_offered_fails_with_500(start_server):
    opened: list = []
    server = start_server(app_with(upgrade=lambda request: {"protocol": "chat.v3"}, open=lambda peer: opened.append(1)))
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        connect(server, subprotocols=["chat.v1", "chat.v2"])
    assert info.value.status_code == 500

    raw = try_upgrade(server, extra="Sec-WebSocket-Protocol: chat.v1\r\n")
    assert parse_response(raw)[0] == 500
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

    server = start_server(app_with(upgrade=upgrade, open=open_, message=message))
    client = connect(server, "/_ws?user=alice")
    client.send("a")
    assert client.recv() == "alice:1"
    client.send("b")
    assert client.recv() == "alice:2"
    assert seen == [{"user": "alice", "role": "admin"}]
    client.close()


@pytest.mark.parametrize(
    "route, path, upgrade, attribute, expected",
    [
        pytest.param("/_ws", "/_ws", None, "context", {}, id="default-context-is-an-empty-dict"),
        pytest.param(
            "/_ws",
            "/_ws?x=1",
            lambda request: {"namespace": "custom"},
            "namespace",
            "custom",
            id="upgrade-namespace-override",
        ),
        pytest.param(
            "/rooms/<room>",
            "/rooms/game?x=1&y=2",
            None,
            "namespace",
            "/rooms/game",
            id="default-namespace-is-the-path-without-query",
        ),
    ],
)
def test_what_the_open_hook_sees(start_server, route, path, upgrade, attribute, expected):
    seen: list = []
    hooks = {} if upgrade is None else {"upgrade": upgrade}
    server = start_server(app_with(route, open=lambda peer: seen.append(getattr(peer, attribute)), **hooks))
    client = connect(server, path)
    assert wait_until(lambda: seen)
    assert seen == [expected] and isinstance(seen[0], type(expected))
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

    server = start_server(app_with(upgrade=upgrade))
    client = connect(server, "/_ws?q=42", header=["X-Custom: hello"], cookie="session=abc")
    assert seen == [(True, "/_ws", "42", "hello", "abc")]
    client.close()


@pytest.mark.parametrize(
    "decision",
    [{"bogus": 1}, "yes", 42, {"context": "not a dict"}],
    ids=["unknown-key", "str", "int", "bad-context"],
)
def test_upgrade_bad_return_value_rejects_with_500(start_server, decision):
    server = start_server(app_with(upgrade=lambda request: decision))
    raw = try_upgrade(server)
    assert parse_response(raw)[0] == 500
    assert b"101 Switching" not in raw
    assert not server.peers


def test_non_upgrade_request_to_websocket_route_gets_426(start_server):
    opened: list = []
    server = start_server(app_with(upgrade=lambda request: opened.append("upgrade"), open=lambda p: opened.append(1)))
    raw = http_exchange(
        server, f"GET /_ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nConnection: close\r\n\r\n".encode()
    )
    status, _headers, _ = parse_response(raw)
    assert status == 426
    assert opened == []


def test_socket_sees_101_then_frames_only(start_server):
    """After the handshake the socket carries WebSocket frames and nothing else."""
    server = start_server(app_with(open=lambda peer: peer.send("hello")))
    with RawClient(server, host="x") as raw:  # asserts the "HTTP/1.1 101 " head
        assert raw.read_exactly(7) == b"\x81\x05hello"
