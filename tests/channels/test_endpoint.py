"""The channels endpoint over real sockets: the Python client, and raw clients for what it would never send."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
import websocket

from syncws import Channels, Refused, RPCError
from syncws.base.errors import ClientClosed, RequestFailed
from syncws.protocol.channels import SUBPROTOCOL

from ..conftest import wait_until
from ..support import answered_without_upgrade, recv_close


def users(request, token):
    """``connect``: the token is the user id; "bad" is refused, "boom" breaks the hook."""
    if token == "bad":
        raise Refused("bad token")
    if token == "boom":
        raise RuntimeError("the user database is down")
    if token is None:
        return None
    return {"user": token, "info": {"name": token.title()}}


def raw(url: str, protocol: str | None = SUBPROTOCOL, timeout: float = 5) -> websocket.WebSocket:
    return websocket.create_connection(url, subprotocols=[protocol] if protocol else None, timeout=timeout)


def ask(ws: websocket.WebSocket, request: dict) -> dict:
    """Send one request and return the answer with its id (pushes in between are skipped)."""
    ws.send(json.dumps(request))
    while True:
        answer = json.loads(ws.recv())
        if "id" in answer:
            return answer


def connected(url: str, token: str = "ann") -> websocket.WebSocket:
    ws = raw(url)
    assert "result" in ask(ws, {"type": "connect", "id": 0, "token": token})
    return ws


# -- connect ---------------------------------------------------------------------------------


def test_connect_names_the_user_and_the_hooks_see_it(endpoint, clients):
    seen = []
    channels = Channels(connect=users, open=lambda peer: seen.append(("open", peer.user, peer.user_info)))
    channels.rpc("whoami")(lambda peer, params: [peer.user, peer.user_info])
    _, url, _ = endpoint(channels)
    client = clients(url, token="ann")
    assert client.rpc("whoami") == ["ann", {"name": "Ann"}]
    assert client.session["user"] == "ann" and client.session["version"] == 1
    assert seen == [("open", "ann", {"name": "Ann"})]


def test_a_refused_token_closes_with_4001_and_the_client_does_not_retry(endpoint, clients):
    calls = []

    def connect(request, token):
        calls.append(token)
        return users(request, token)

    _, url, _ = endpoint(Channels(connect=connect))
    client = clients(url, token="bad")
    with pytest.raises(ClientClosed) as caught:
        client.wait_connected(5)
    assert (caught.value.code, caught.value.reason) == (4001, "bad token")
    time.sleep(0.3)
    assert calls == ["bad"]
    none = clients(url)  # no token: connect returns None, a refusal without a reason
    with pytest.raises(ClientClosed, match="4001: unauthorized"):
        none.wait_connected(5)


def test_a_failing_connect_hook_closes_with_1011_and_the_client_retries(endpoint, clients, caplog):
    tokens = iter(["boom", "boom", "ann"])
    _, url, _ = endpoint(Channels(connect=users))
    client = clients(url, get_token=lambda: next(tokens))
    client.wait_connected(5)
    assert client.session["user"] == "ann"
    assert client.reconnects == 0  # the first connection that got through
    assert "the channels connect hook failed" in caplog.text


def test_without_a_connect_hook_every_client_is_anonymous(endpoint, clients):
    _, url, _ = endpoint()
    client = clients(url)
    client.wait_connected(5)
    assert client.session["user"] is None


def test_the_subprotocol_is_required(endpoint):
    server, url, _ = endpoint()
    answer = answered_without_upgrade(server, "/_syncws", 400)
    assert SUBPROTOCOL.encode() in answer
    ws = raw(url)
    assert ws.subprotocol == SUBPROTOCOL
    ws.close()


@pytest.mark.parametrize(
    "first",
    [
        '{"type": "subscribe", "id": 1, "topic": "t"}',
        "not json",
        '{"type": "connect", "token": "ann"}',  # a connect needs an id
        '{"type": "connect", "id": 1, "token": 5}',
    ],
)
def test_anything_but_a_connect_first_closes_with_4000(endpoint, first):
    _, url, _ = endpoint(Channels(connect=users))
    ws = raw(url)
    ws.send(first)
    code, _ = recv_close(ws)
    assert code == 4000
    ws.close()


def test_binary_before_connect_and_a_silent_client_get_4000(endpoint):
    _, url, _ = endpoint(Channels(connect=users, connect_timeout=0.3))
    ws = raw(url)
    ws.send_binary(b"\x00")
    assert recv_close(ws)[0] == 4000
    ws.close()
    silent = raw(url)
    assert recv_close(silent) == (4000, "no connect request in time")
    silent.close()


def test_a_second_connect_is_an_error_reply(endpoint):
    _, url, _ = endpoint(Channels(connect=users))
    ws = connected(url)
    answer = ask(ws, {"type": "connect", "id": 5, "token": "bob"})
    assert answer["error"]["code"] == "bad_request"
    ws.close()


# -- subscribe, publish, presence, history --------------------------------------------------------


def test_authorize_is_asked_for_each_action_and_refusals_are_forbidden(endpoint, clients):
    asked = []

    def authorize(peer, action, topic):
        asked.append((peer.user, action, topic))
        if topic == "secret":
            raise Refused("members only")
        return topic == "open"

    _, url, _ = endpoint(Channels(connect=users, authorize=authorize))
    client = clients(url, token="ann")
    for call in (
        lambda topic: client.subscribe(topic),
        lambda topic: client.publish(topic, 1),
        lambda topic: client.presence(topic),
        lambda topic: client.history(topic),
    ):
        call("open")
        with pytest.raises(RequestFailed) as caught:
            call("closed")
        assert caught.value.code == "forbidden"
        with pytest.raises(RequestFailed, match="members only"):
            call("secret")
    assert [action for _, action, topic in asked if topic == "open"] == ["subscribe", "publish", "presence", "history"]
    assert {user for user, _, _ in asked} == {"ann"}


def test_by_default_clients_subscribe_but_do_not_publish(endpoint, clients):
    server, url, _ = endpoint()
    client = clients(url)
    sub = client.subscribe("news")
    with pytest.raises(RequestFailed, match="forbidden: publish refused"):
        client.publish("news", "spam")
    server.publish("news", {"title": "hello"})
    assert sub.get(5).data == {"title": "hello"}


def test_publications_carry_topic_and_offset_and_resume_without_loss(endpoint, clients):
    server, url, _ = endpoint(Channels(authorize=lambda peer, action, topic: True), history_size=100)
    client = clients(url)
    sub = client.subscribe("room")
    assert (sub.recovered, sub.replayed, sub.offset) == (False, 0, None)
    client.publish("room", {"n": 1})
    client.publish("room", "two")
    client.publish("room", [3])
    first, second, third = sub.get(5), sub.get(5), sub.get(5)
    assert [first.data, second.data, third.data] == [{"n": 1}, "two", [3]]
    assert first.topic == "room" and first.offset and second.offset != first.offset
    with pytest.raises(TypeError):
        client.publish("room", b"bytes")  # JSON has no bytes: refused before anything is sent
    server.publish("room", b"\x01\x02")  # binary from the server: base64 in the envelope, bytes here
    assert sub.get(5).data == b"\x01\x02"
    # A second client picks up after the first publication only.
    later = clients(url)
    again = later.subscribe("room", since=first.offset)
    assert (again.recovered, again.replayed) == (True, 3)
    assert [again.get(5).data for _ in range(3)] == ["two", [3], b"\x01\x02"]


def test_exclude_self_and_unsubscribe(endpoint, clients):
    _, url, _ = endpoint(Channels(authorize=lambda peer, action, topic: True))
    ann, bob = clients(url), clients(url)
    mine, theirs = ann.subscribe("t"), bob.subscribe("t")
    ann.publish("t", "not to me", exclude_self=True)
    assert theirs.get(5).data == "not to me"
    ann.publish("t", "to all")
    assert mine.get(5).data == "to all" and theirs.get(5).data == "to all"
    bob.unsubscribe("t")
    assert not theirs.active
    ann.publish("t", "after")
    assert mine.get(5).data == "after"
    with pytest.raises(ClientClosed):
        theirs.get(1)


def test_presence_members_deduplicated_by_user_and_join_leave_events(endpoint, clients):
    _, url, _ = endpoint(Channels(connect=users))
    events: list = []
    watcher = clients(url, token="ann")
    watcher.subscribe("lobby", presence_events=True, on_presence=events.append)
    bob1, bob2 = clients(url, token="bob"), clients(url, token="bob")
    bob1.subscribe("lobby")
    bob2.subscribe("lobby")
    members = watcher.presence("lobby")
    assert sorted(m["user"] for m in members) == ["ann", "bob", "bob"]
    assert sorted(m["user"] for m in watcher.presence("lobby", by_user=True)) == ["ann", "bob"]
    assert {m["info"]["name"] for m in members} == {"Ann", "Bob"}
    bob2.close()
    assert wait_until(lambda: [e["type"] for e in events] == ["join", "join", "join", "leave"])
    assert [e["user"] for e in events] == ["ann", "bob", "bob", "bob"]
    assert events[-1]["client"] == bob2.session["client"]


def test_history_reads_the_newest_within_the_limit(endpoint, clients):
    server, url, _ = endpoint(history_size=100)
    client = clients(url)
    for n in range(5):
        server.publish("log", n, namespace="/_syncws")
    entries = client.history("log", limit=2)
    assert [e.data for e in entries] == [3, 4]
    assert [e.data for e in client.history("log", since=entries[0].offset)] == [4]
    with pytest.raises(RequestFailed, match="limit must be 0 or more"):
        client.history("log", limit=-1)


def test_the_subscription_bound_is_an_error_reply(endpoint, clients):
    _, url, _ = endpoint(Channels(max_subscriptions=2))
    client = clients(url)
    client.subscribe("a")
    client.subscribe("b")
    client.subscribe("a")  # again: not a new one
    with pytest.raises(RequestFailed) as caught:
        client.subscribe("c")
    assert caught.value.code == "limit"
    client.unsubscribe("a")
    client.subscribe("c")


def test_reserved_and_bad_topics_are_bad_requests(endpoint, clients):
    _, url, _ = endpoint()
    client = clients(url)
    for topic in ("$presence:x", "", "x" * 257):
        with pytest.raises(RequestFailed, match="bad_request"):
            client.subscribe(topic)


# -- RPC and messages ------------------------------------------------------------------------------


def test_rpc_results_errors_unknown_methods_and_timeouts(endpoint, clients, caplog):
    channels = Channels()
    release = threading.Event()

    @channels.rpc("add")
    def add(peer, params):
        return params["a"] + params["b"]

    @channels.rpc("refuse")
    def refuse(peer, params):
        raise RPCError("no_room", "there is no such room")

    @channels.rpc("crash")
    def crash(peer, params):
        raise KeyError("secret detail")

    @channels.rpc("unjsonable")
    def unjsonable(peer, params):
        return {1, 2}

    @channels.rpc("slow")
    def slow(peer, params):
        release.wait(5)
        return "late"

    _, url, _ = endpoint(channels)
    client = clients(url)
    assert client.rpc("add", {"a": 2, "b": 3}) == 5
    with pytest.raises(RequestFailed) as caught:
        client.rpc("refuse")
    assert (caught.value.code, caught.value.message) == ("no_room", "there is no such room")
    for method in ("crash", "unjsonable"):
        with pytest.raises(RequestFailed) as caught:
            client.rpc(method)
        assert (caught.value.code, caught.value.message) == ("internal", "internal error")
    assert "secret detail" in caplog.text  # in the log, never to the client
    with pytest.raises(RequestFailed, match="not_found"):
        client.rpc("nope")
    with pytest.raises(TimeoutError):
        client.rpc("slow", timeout=0.3)
    # A slow method holds nothing else of the connection.
    assert client.rpc("add", {"a": 1, "b": 1}) == 2
    release.set()


def test_pending_rpcs_are_bounded(endpoint, clients):
    channels = Channels(max_pending_rpcs=2)
    release = threading.Event()
    channels.rpc("wait")(lambda peer, params: release.wait(5))
    _, url, _ = endpoint(channels)
    client = clients(url)
    outcomes: list = []

    def call():
        try:
            outcomes.append(client.rpc("wait"))
        except RequestFailed as exc:
            outcomes.append(exc.code)

    callers = [threading.Thread(target=call) for _ in range(3)]
    for caller in callers:
        caller.start()
    assert wait_until(lambda: outcomes == ["limit"])
    release.set()
    for caller in callers:
        caller.join(5)
    assert sorted(map(str, outcomes)) == ["True", "True", "limit"]


def test_messages_go_to_the_message_hook_and_the_server_can_push(endpoint, clients):
    got: list = []
    channels = Channels(message=lambda peer, data: got.append(data))
    _, url, _ = endpoint(channels)
    pushed: list = []
    client = clients(url, on_message=pushed.append)
    client.send({"typing": True})
    assert got == [{"typing": True}]
    ws = connected(url)
    ws.send_binary(b"\x01raw")
    assert wait_until(lambda: got[-1] == b"\x01raw")
    peer = next(p for p in channels_peers(channels) if p.id == client.session["client"])
    assert channels.send(peer, {"hello": 1})
    assert wait_until(lambda: pushed == [{"hello": 1}])
    ws.close()


def channels_peers(channels: Channels) -> list:
    return list(channels._states)


# -- expiry and refresh ------------------------------------------------------------------------------


def expiring(request, token):
    user, _, serial = token.partition(":")
    return {"user": user, "expires_in": 1.0, "info": {"serial": int(serial)}}


def test_an_expiring_connection_is_refreshed_through_get_token(endpoint, clients):
    refreshed: list = []

    def refresh(peer, token):
        refreshed.append(token)
        return expiring(None, token)

    channels = Channels(connect=expiring, refresh=refresh, refresh_window=0.6)
    channels.rpc("info")(lambda peer, params: peer.user_info)
    _, url, _ = endpoint(channels)
    serials = iter(range(1, 100))
    client = clients(url, token="ann:0", get_token=lambda: f"ann:{next(serials)}")
    sub = client.subscribe("t")
    time.sleep(2.5)  # past two expiries
    assert not client.closed and sub.active and client.reconnects == 0
    assert refreshed[:2] == ["ann:1", "ann:2"]
    assert client.rpc("info") == {"serial": len(refreshed)}  # the refresh's info replaced the connect's


def test_a_connection_that_does_not_refresh_is_closed_with_4002(endpoint, clients):
    _, url, _ = endpoint(Channels(connect=expiring, refresh_window=0.5))
    client = clients(url, token="ann:0")  # no get_token: it cannot refresh, nor reconnect
    client.wait_connected(5)
    assert wait_until(lambda: client.closed, timeout=5)
    assert client.close_code == 4002
    raw_ws = connected(url, "bob:0")  # a raw client that ignores the refresh request
    assert json.loads(raw_ws.recv()) == {"type": "refresh"}
    assert recv_close(raw_ws) == (4002, "credentials expired")
    raw_ws.close()


def test_the_default_refresh_checks_the_token_names_the_same_user(endpoint):
    _, url, _ = endpoint(Channels(connect=expiring))
    ws = connected(url, "ann:0")
    assert ask(ws, {"type": "refresh", "id": 1, "token": "ann:1"})["result"] == {"expires_in": 1.0}
    ws.send(json.dumps({"type": "refresh", "id": 2, "token": "eve:1"}))
    assert recv_close(ws) == (4001, "the token names another user")
    ws.close()


# -- revoke ----------------------------------------------------------------------------------------------


def test_server_disconnect_and_unsubscribe_act_on_every_connection_of_the_user(endpoint, clients):
    server, url, _ = endpoint(Channels(connect=users))
    ann1, ann2, bob = clients(url, token="ann"), clients(url, token="ann"), clients(url, token="bob")
    subs = [c.subscribe("room") for c in (ann1, ann2, bob)]
    server.unsubscribe("ann", "room")
    assert wait_until(lambda: not subs[0].active and not subs[1].active)
    assert subs[2].active
    server.publish("room", "bob only")
    assert subs[2].get(5).data == "bob only"
    server.disconnect(user="ann", reason="banned")
    assert wait_until(lambda: ann1.closed and ann2.closed)
    assert (ann1.close_code, ann1.close_reason) == (4003, "banned")
    time.sleep(0.3)
    assert not bob.closed and ann1.reconnects == 0
    with pytest.raises(ValueError):
        server.disconnect(user="ann", code=999)
    with pytest.raises(ValueError):
        server.disconnect(user=True)


# -- malformed input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        ({"type": "subscribe", "id": 1}, "bad_request"),
        ({"type": "subscribe", "id": 1, "topic": ["a"]}, "bad_request"),
        ({"type": "subscribe", "id": 1, "topic": "a", "since": 5}, "bad_request"),
        ({"type": "subscribe", "id": 1, "topic": "a", "presence_events": "yes"}, "bad_request"),
        ({"type": "publish", "id": 1, "topic": "a"}, "bad_request"),
        ({"type": "rpc", "id": 1}, "bad_request"),
        ({"type": "rpc", "id": 1, "method": 3}, "bad_request"),
        ({"type": "refresh", "id": 1}, "bad_request"),
        ({"type": "history", "id": 1, "topic": "a", "limit": "all"}, "bad_request"),
        ({"type": "launch", "id": 1}, "bad_request"),
        ({"type": "rpc", "id": 1, "method": "x"}, "not_found"),
    ],
)
def test_malformed_requests_get_error_replies_and_the_connection_stays(endpoint, request_, code):
    _, url, _ = endpoint()
    ws = connected(url)
    assert ask(ws, request_)["error"]["code"] == code
    assert "result" in ask(ws, {"type": "subscribe", "id": 2, "topic": "still-here"})
    ws.close()


def test_an_oversized_message_closes_with_1009_and_the_client_stops(endpoint, clients):
    _, url, _ = endpoint(Channels(max_message_size=1024))
    client = clients(url)
    client.wait_connected(5)
    with pytest.raises((ConnectionError, TimeoutError)):
        client.send("x" * 5000)
    assert wait_until(lambda: client.closed)
    assert client.close_code == 1009


def test_the_heartbeat_reaches_the_client(endpoint):
    _, url, _ = endpoint(Channels(heartbeat=0.2))
    ws = connected(url)
    assert json.loads(ws.recv()) == {"type": "ping"}
    ws.send(json.dumps({"type": "pong"}))
    assert json.loads(ws.recv()) == {"type": "ping"}
    ws.close()


def test_bad_configuration_is_refused_at_once():
    with pytest.raises(ValueError, match="max_subscriptions"):
        Channels(max_subscriptions=0)
    with pytest.raises(ValueError, match="heartbeat"):
        Channels(heartbeat=-1)
    with pytest.raises(TypeError, match="connect"):
        Channels(connect="users")
    with pytest.raises(TypeError, match="unknown option"):
        Channels(max_mesage_size=5)
    with pytest.raises(ValueError, match="name"):
        Channels().rpc("")
    with pytest.raises(TypeError):
        Channels().rpc("x")(5)


def test_a_connect_hook_returning_nonsense_is_logged_and_closes_with_1011(endpoint, caplog):
    _, url, _ = endpoint(Channels(connect=lambda request, token: {"user": "a", "roles": []}))
    ws = raw(url)
    ws.send(json.dumps({"type": "connect", "id": 0}))
    assert recv_close(ws)[0] == 1011
    ws.close()
    assert "unknown key(s): roles" in caplog.text


logging.getLogger("syncws.channels").setLevel(logging.INFO)
