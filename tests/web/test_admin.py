"""The HTTP publish and admin API: credentials, limits and every operation, in-process and across processes."""

from __future__ import annotations

import base64
import json
import re
import socket
from pathlib import Path

import pytest
import requests
import websocket

from syncws import App, Channels, ConfigurationError, Server, define_websocket_handler

from ..conftest import connect, wait_until
from ..support import RedisServer, SyncwsRunner, recv_close
from ..support.clients import assert_nothing_received

ROOT = Path(__file__).resolve().parents[2]
KEY = "k3y-for-tests"
AUTH = {"Authorization": f"Bearer {KEY}"}


def chat_app() -> App:
    """``/_ws?user=U&topic=T``: identifies as U and subscribes to T; ``/_syncws``: a channels endpoint."""
    app = App()

    def on_open(peer):
        args = peer.request.args
        peer.identify(args.get("user", "anonymous"))
        peer.subscribe(args.get("topic", "news"))

    app.get("/_ws", define_websocket_handler(open=on_open))
    channels = Channels(connect=lambda request, token: {"user": token}, authorize=lambda peer, action, topic: True)
    app.get("/_syncws", channels)
    app.get("/", lambda request: "home")
    return app


@pytest.fixture
def admin(start_server):
    """A server with the API on the main port under /admin and on an address of its own; its two base URLs."""

    def start(**options):
        options.setdefault("admin_key", KEY)
        server = start_server(chat_app(), admin_path="/admin", admin="127.0.0.1:0", **options)
        return server, server.url + "/admin", f"http://127.0.0.1:{server.admin.port}"

    return start


def post(url: str, body=None, headers=AUTH, **kwargs) -> requests.Response:
    return requests.post(url, json=body, headers=headers, timeout=5, **kwargs)


def error_of(response: requests.Response) -> tuple[int, str]:
    assert response.headers["Content-Type"] == "application/json"
    return response.status_code, response.json()["error"]["code"]


# -- credentials ---------------------------------------------------------------------------------------


def test_no_key_and_a_wrong_key_get_401_on_both_addresses(admin):
    server, main, side = admin()
    client = connect(server, "/_ws?topic=news")
    for base in (main, side):
        missing = post(base + "/publish", {"topic": "news", "data": 1}, headers={})
        assert error_of(missing) == (401, "unauthorized")
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        wrong = post(base + "/publish", {"topic": "news", "data": 1}, headers={"Authorization": "Bearer nope"})
        assert error_of(wrong) == (401, "unauthorized")
        assert "invalid_token" in wrong.headers["WWW-Authenticate"]
        basic = post(base + "/publish", {"topic": "news", "data": 1}, headers={"Authorization": f"Basic {KEY}"})
        assert error_of(basic) == (401, "unauthorized")
    assert_nothing_received(client)  # nothing was published
    assert requests.get(side + "/stats", timeout=5).status_code == 401  # stats disclose too


def test_a_server_with_the_api_and_no_credential_refuses_to_start():
    with pytest.raises(ConfigurationError, match="admin_key"):
        Server(chat_app(), port=0, admin_path="/admin")
    with pytest.raises(ConfigurationError, match="not both"):
        Server(chat_app(), port=0, admin_path="/admin", admin_key=KEY, admin_auth=lambda request: True)
    with pytest.raises(ConfigurationError, match="callable"):
        Server(chat_app(), port=0, admin_path="/admin", admin_auth="yes")
    with pytest.raises(ConfigurationError, match="admin_path"):
        Server(chat_app(), port=0, admin_path="admin", admin_key=KEY)
    with pytest.raises(ConfigurationError, match="admin must be HOST:PORT"):
        Server(chat_app(), port=0, admin="nowhere", admin_key=KEY).start()


def test_admin_auth_decides_instead_of_a_key(start_server):
    seen = []

    def auth(request):
        seen.append(request.path)
        if request.headers.get("X-Team") == "ops":
            return True
        if request.headers.get("X-Team") == "broken":
            raise RuntimeError("the auth service is down")
        return False

    server = start_server(chat_app(), admin_path="/ops", admin_auth=auth)
    assert post(server.url + "/ops/stats", {}, headers={"X-Team": "ops"}).status_code == 200
    assert error_of(post(server.url + "/ops/stats", {}, headers={"X-Team": "dev"})) == (401, "unauthorized")
    assert error_of(post(server.url + "/ops/stats", {}, headers={"X-Team": "broken"})) == (401, "unauthorized")
    assert seen == ["/ops/stats"] * 3


# -- bad input ------------------------------------------------------------------------------------------


def test_an_oversized_body_gets_413_whether_announced_or_streamed(admin):
    _server, main, side = admin(admin_max_body=1024)
    big = {"topic": "news", "data": "x" * 2000}
    assert error_of(post(main + "/publish", big)) == (413, "too_large")

    def chunks():
        yield json.dumps(big).encode()

    streamed = requests.post(side + "/publish", data=chunks(), headers=AUTH, timeout=5)  # chunked: no length
    assert error_of(streamed) == (413, "too_large")
    assert post(side + "/publish", {"topic": "news", "data": "x" * 900}).status_code == 200


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/publish", None, "'topic' is required"),
        ("/publish", {"topic": "news"}, "'data' is required"),
        ("/publish", {"topic": "", "data": 1}, "must not be empty"),
        ("/publish", {"topic": 7, "data": 1}, "wrong type"),
        ("/publish", {"topic": "news", "data": "!!", "encoding": "base64"}, "not valid base64"),
        ("/publish", {"topic": "news", "data": 1, "encoding": "hex"}, "may only be 'base64'"),
        ("/publish", {"topic": "news", "data": 1, "namespace": 5}, "wrong type"),
        ("/batch", {"publications": "all"}, "wrong type"),
        ("/batch", {"publications": [{"topic": "news", "data": 1}, 5]}, "a JSON object"),
        ("/history", {"topic": "news", "limit": 5000}, "'limit' must be"),
        ("/history", {"topic": "news", "limit": True}, "wrong type"),
        ("/history", {"topic": "news", "since": 5}, "wrong type"),
        ("/disconnect", {"user": ["a"]}, "wrong type"),
        ("/disconnect", {"user": "a", "code": 999}, "code"),
        ("/unsubscribe", {"user": "a"}, "'topic' is required"),
    ],
)
def test_bad_requests_get_400_with_what_is_wrong(admin, path, body, message):
    _server, main, _side = admin(history_size=10)
    response = post(main + path, body)
    assert error_of(response) == (400, "bad_request")
    assert message in response.json()["error"]["message"]


def test_not_json_unknown_operations_and_wrong_methods(admin):
    server, main, side = admin()
    not_json = requests.post(main + "/publish", data=b"{nope", headers=AUTH, timeout=5)
    assert error_of(not_json) == (400, "bad_request")
    assert error_of(post(main + "/publish", [1, 2])) == (400, "bad_request")
    assert error_of(post(side + "/nothing", {})) == (404, "not_found")
    wrong = requests.get(side + "/publish", headers=AUTH, timeout=5)
    assert error_of(wrong) == (405, "method_not_allowed") and wrong.headers["Allow"] == "POST"
    # Under admin_path only its operations are the API's; the rest is the app's.
    assert requests.get(server.url + "/admin/nothing", timeout=5).status_code == 404
    assert requests.get(server.url + "/", timeout=5).text == "home"


def test_requests_over_the_rate_limit_get_429_with_retry_after(admin):
    _server, _main, side = admin(admin_rate_limit=(1, 3))
    statuses = [post(side + "/stats", {}, headers={}).status_code for _ in range(5)]  # unauthenticated ones count
    assert statuses[:3] == [401, 401, 401]
    assert statuses[3:] == [429, 429]
    limited = post(side + "/stats", {})
    assert error_of(limited) == (429, "rate_limited") and limited.headers["Retry-After"] == "1"


def test_a_client_that_sends_half_a_body_is_dropped_without_blocking_others(admin):
    server, _main, side = admin(metrics_timeout=1)
    port = server.admin.port
    stuck = socket.create_connection(("127.0.0.1", port), timeout=5)
    stuck.sendall(
        f"POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 100\r\n\r\n{{".encode()
    )
    assert post(side + "/stats", {}).status_code == 200  # others are served meanwhile
    assert stuck.recv(100) == b""  # closed after metrics_timeout, whatever it was doing
    stuck.close()


# -- operations ---------------------------------------------------------------------------------------------


def test_publish_reaches_hooks_peers_and_channels_users_through_server_publish(admin):
    server, main, side = admin(history_size=10)
    plain = connect(server, "/_ws?topic=news")
    channel = connect(server, "/_syncws", subprotocols=["syncws.v1"])
    channel.send(json.dumps({"type": "connect", "id": 0, "token": "ann"}))
    assert "result" in json.loads(channel.recv())
    channel.send(json.dumps({"type": "subscribe", "id": 1, "topic": "news"}))
    assert json.loads(channel.recv())["id"] == 1
    assert post(main + "/publish", {"topic": "news", "data": {"text": "hello"}}).json() == {"published": 1}
    assert json.loads(plain.recv()) == {"text": "hello"}
    envelope = json.loads(channel.recv())
    assert envelope["topic"] == "news" and envelope["data"] == {"text": "hello"} and envelope["offset"]
    raw = base64.b64encode(b"\x00\x01\xff").decode()
    assert post(side + "/publish", {"topic": "news", "data": raw, "encoding": "base64"}).status_code == 200
    assert plain.recv() == b"\x00\x01\xff"
    assert json.loads(channel.recv())["encoding"] == "base64"


def test_a_batch_is_checked_whole_before_anything_is_published(admin):
    server, _main, side = admin()
    client = connect(server, "/_ws?topic=a")
    bad = {"publications": [{"topic": "a", "data": 1}, {"topic": "a"}]}
    assert error_of(post(side + "/batch", bad)) == (400, "bad_request")
    assert_nothing_received(client)
    good = {"publications": [{"topic": "a", "data": n} for n in range(3)] + [{"topic": "b", "data": 9}]}
    assert post(side + "/batch", good).json() == {"published": 4}
    assert [client.recv() for _ in range(3)] == ["0", "1", "2"]
    too_many = {"publications": [{"topic": "a", "data": 1}] * 1001}
    assert "at most 1000" in post(side + "/batch", too_many).json()["error"]["message"]


def test_history_presence_disconnect_unsubscribe_and_stats(admin):
    server, main, side = admin(history_size=10)
    ann = connect(server, "/_ws?user=ann&topic=room")
    bob = connect(server, "/_ws?user=bob&topic=room")
    for n in range(3):
        post(side + "/publish", {"topic": "room", "data": {"n": n}, "namespace": "/_ws"})
    assert [json.loads(ann.recv())["n"] for _ in range(3)] == [0, 1, 2]
    history = post(side + "/history", {"topic": "room", "namespace": "/_ws", "limit": 2}).json()["publications"]
    assert [entry["data"] for entry in history] == [{"n": 1}, {"n": 2}]
    since = post(side + "/history", {"topic": "room", "namespace": "/_ws", "since": history[0]["offset"]}).json()
    assert [entry["data"] for entry in since["publications"]] == [{"n": 2}]
    presence = post(side + "/presence", {"topic": "room"}).json()
    assert presence["count"] == 2 and len(presence["members"]) == 2

    assert post(main + "/unsubscribe", {"user": "bob", "topic": "room"}).json() == {}
    assert wait_until(lambda: post(side + "/presence", {"topic": "room"}).json()["count"] == 1)
    assert post(main + "/disconnect", {"user": "ann", "reason": "bye"}).json() == {}
    assert recv_close(ann) == (4003, "bye")
    stats = requests.get(side + "/stats", headers=AUTH, timeout=5).json()
    assert stats["connections"]["websocket"] == 1 and stats["totals"]["websocket_connections"] == 2
    for client in (ann, bob):
        client.close()


def test_the_admin_address_answers_health_without_a_key(admin):
    _server, _main, side = admin()
    assert requests.get(side + "/health/ready", timeout=5).json()["status"] == "ok"
    assert requests.get(side + "/health/live", timeout=5).status_code == 200


# -- across processes -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_across_two_processes_with_redis_publish_history_and_disconnect_reach_everyone(tmp_path):
    with RedisServer(tmp_path) as redis_server, SyncwsRunner(ROOT) as run:
        args = ("tests.apps.channels_app:app", "--port", "0", "--broker", redis_server.url, "--history-size", "10")
        first = run(*args, "--admin", "127.0.0.1:0", env={"SYNCWS_ADMIN_KEY": KEY})
        second = run(*args)
        first_url, second_url = first.wait_for_url(), second.wait_for_url()
        assert wait_until(lambda: "admin API on" in "".join(first.stderr))
        admin_url = re.search(r"admin API on (http://\S+)/", "".join(first.stderr)).group(1)
        peer = websocket.create_connection(
            second_url.replace("http", "ws") + "/_syncws", subprotocols=["syncws.v1"], timeout=5
        )
        peer.send(json.dumps({"type": "connect", "id": 0, "token": "carol"}))
        assert "result" in json.loads(peer.recv())
        peer.send(json.dumps({"type": "subscribe", "id": 1, "topic": "alerts"}))
        assert json.loads(peer.recv())["id"] == 1
        assert wait_until(
            lambda: post(admin_url + "/presence", {"topic": "alerts", "namespace": "/_syncws"}).json()["count"] == 1
        )
        assert post(admin_url + "/publish", {"topic": "alerts", "data": "disk full", "namespace": "/_syncws"}).ok
        publication = json.loads(peer.recv())
        assert publication["data"] == "disk full"
        stored = post(admin_url + "/history", {"topic": "alerts", "namespace": "/_syncws"}).json()["publications"]
        assert stored == [{"offset": publication["offset"], "data": "disk full"}]
        assert post(admin_url + "/disconnect", {"user": "carol", "reason": "maintenance"}).ok
        assert recv_close(peer) == (4003, "maintenance")
        assert requests.get(first_url + "/", timeout=5).status_code == 200
