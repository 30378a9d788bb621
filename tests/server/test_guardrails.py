"""Connection caps, trusted proxies and per-peer rate limits, over real sockets."""

from __future__ import annotations

import json
import time

import pytest
import requests
import websocket
from werkzeug.wrappers import Response

from syncws import App, ConfigurationError, create_event_stream, define_websocket_handler, serve

from ..conftest import connect, wait_until
from ..support import http_exchange, parse_response, recv_close, upgrade_request
from ..support.http import new_key


def guarded_app(**handler_options) -> App:
    """``/_ws`` echoes and answers ``{"address": ...}`` to "who"; ``/sse`` is a stream; ``/`` plain HTTP."""
    received: list = []

    def message(peer, msg):
        received.append(msg.text())
        if msg.text() == "who":
            peer.send({"address": peer.remote_address})
        else:
            peer.send(msg)

    app = App()
    app.get("/_ws", define_websocket_handler(message=message, **handler_options))
    app.get("/free", define_websocket_handler(message=lambda peer, msg: peer.send(msg)))
    app.get("/", lambda request: "plain")

    @app.get("/sse")
    def sse(request):
        stream = create_event_stream(request, keep_alive=None)
        stream.push("hello")
        return stream

    app.received = received  # type: ignore[attr-defined]  # what the tests read
    return app


def upgrade(server, path: str = "/_ws", extra: str = "") -> tuple[int, dict, bytes]:
    return parse_response(http_exchange(server, upgrade_request(path, key=new_key(), extra=extra)))


# -- connection caps -------------------------------------------------------------------


def test_max_connections_refuses_upgrades_and_streams_with_503_never_101(start_server):
    server = start_server(guarded_app(), max_connections=2)
    first, second = connect(server), connect(server)
    status, headers, body = upgrade(server)
    assert status == 503 and headers["retry-after"] == "5" and b"connection limit" in body
    assert "sec-websocket-accept" not in headers
    stream = requests.get(server.url + "/sse", stream=True, timeout=5)
    assert stream.status_code == 503 and stream.headers["Retry-After"] == "5"
    assert requests.get(server.url + "/", timeout=5).text == "plain"  # plain HTTP is not counted
    first.close()
    assert wait_until(lambda: upgrade(server)[0] == 101)  # a slot came back
    second.close()


def test_event_streams_count_and_give_their_slot_back(start_server):
    server = start_server(guarded_app(), max_connections=1)
    with requests.get(server.url + "/sse", stream=True, timeout=5) as stream:
        assert stream.status_code == 200
        assert upgrade(server)[0] == 503
    assert wait_until(lambda: upgrade(server)[0] == 101)


def test_a_refused_upgrade_hook_gives_its_slot_back(start_server):
    app = App()
    app.get("/_ws", define_websocket_handler(upgrade=lambda request: Response("no", 401)))
    app.get("/ok", define_websocket_handler())
    server = start_server(app, max_connections=1)
    for _ in range(3):
        assert upgrade(server)[0] == 401
    assert upgrade(server, "/ok")[0] == 101


def test_max_connections_per_ip_answers_429(start_server):
    server = start_server(guarded_app(), max_connections_per_ip=2)
    clients = [connect(server), connect(server)]
    status, headers, _ = upgrade(server)
    assert status == 429 and headers["retry-after"] == "5"
    assert requests.get(server.url + "/sse", stream=True, timeout=5).status_code == 429
    clients[0].close()
    assert wait_until(lambda: upgrade(server)[0] == 101)
    clients[1].close()


# -- trusted proxies -----------------------------------------------------------------


def who(server, extra: str = "") -> str:
    client = websocket.create_connection(
        server.url.replace("http", "ws") + "/_ws", timeout=5, header=[h for h in extra.split("\r\n") if h]
    )
    try:
        client.send("who")
        return json.loads(client.recv())["address"]
    finally:
        client.close()


def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(start_server):
    trusting = start_server(guarded_app(), trusted_proxies=["127.0.0.0/8"])
    assert who(trusting, "X-Forwarded-For: 198.51.100.7") == "198.51.100.7"
    assert who(trusting, "X-Forwarded-For: 6.6.6.6, 198.51.100.7") == "198.51.100.7"
    assert who(trusting, 'Forwarded: for="[2001:db8::5]:4711"') == "127.0.0.1"  # not the header read
    assert who(trusting) == "127.0.0.1"
    rfc = start_server(guarded_app(), trusted_proxies=["127.0.0.0/8"], forwarded_header="forwarded")
    assert who(rfc, 'Forwarded: for="[2001:db8::5]:4711"') == "2001:db8::5"
    assert who(rfc, "X-Forwarded-For: 198.51.100.7") == "127.0.0.1"
    untrusting = start_server(guarded_app(), trusted_proxies=["10.0.0.0/8"])
    assert who(untrusting, "X-Forwarded-For: 198.51.100.7") == "127.0.0.1"  # we are not a trusted proxy
    plain = start_server(guarded_app())
    assert who(plain, "X-Forwarded-For: 198.51.100.7") == "127.0.0.1"


def test_the_per_ip_cap_counts_the_forwarded_client(start_server):
    server = start_server(guarded_app(), trusted_proxies=["127.0.0.1"], max_connections_per_ip=1)
    a = upgrade(server, extra="X-Forwarded-For: 198.51.100.1\r\n")
    assert a[0] == 101
    held = websocket.create_connection(
        server.url.replace("http", "ws") + "/_ws", timeout=5, header=["X-Forwarded-For: 198.51.100.2"]
    )
    try:
        assert upgrade(server, extra="X-Forwarded-For: 198.51.100.2\r\n")[0] == 429
        assert upgrade(server, extra="X-Forwarded-For: 198.51.100.3\r\n")[0] == 101  # another client
    finally:
        held.close()


def test_a_client_cannot_escape_the_per_ip_cap_with_headers_of_its_own(start_server):
    # Behind nginx's documented config the proxy appends the address it saw
    # to X-Forwarded-For and passes any Forwarded header on as the client
    # wrote it.  Before, syncws preferred Forwarded: 19 connections with a
    # cap of 5, each with an address the client chose.
    server = start_server(guarded_app(), trusted_proxies=["127.0.0.1"], max_connections_per_ip=5)
    statuses = []
    held = []
    for n in range(12):
        headers = [f"Forwarded: for=203.0.113.{n}", f"X-Forwarded-For: 6.6.6.{n}, 198.51.100.9"]
        try:
            held.append(
                websocket.create_connection(server.url.replace("http", "ws") + "/_ws", timeout=5, header=headers)
            )
            statuses.append(101)
        except websocket.WebSocketBadStatusException as exc:
            statuses.append(exc.status_code)
    try:
        assert statuses == [101] * 5 + [429] * 7
        held[0].send("who")
        assert json.loads(held[0].recv())["address"] == "198.51.100.9"
    finally:
        for client in held:
            client.close()


def test_bad_forwarded_header_is_refused():
    with pytest.raises(ConfigurationError, match="forwarded_header"):
        serve(App(), port=0, background=True, forwarded_header="x-real-ip")


def test_bad_trusted_proxies_are_refused():
    with pytest.raises(ConfigurationError, match="trusted_proxies"):
        serve(App(), port=0, background=True, trusted_proxies=["not-an-address"])


# -- rate limits ---------------------------------------------------------------------


def test_a_flooding_peer_is_closed_with_1008_while_a_healthy_peer_stays_fast(start_server):
    app = guarded_app(rate_limit=(20, 20))
    server = start_server(app)
    healthy = connect(server, "/free")
    flooder = connect(server)
    for i in range(200):
        try:
            flooder.send(f"flood {i}")
        except (BrokenPipeError, ConnectionResetError, websocket.WebSocketConnectionClosedException):
            break
    assert recv_close(flooder) == (1008, "rate limit exceeded")
    assert len([m for m in app.received if m.startswith("flood")]) <= 21  # the burst, then the limit
    started = time.monotonic()
    healthy.send("still fast")
    assert healthy.recv() == "still fast"
    assert time.monotonic() - started < 1.0
    healthy.close()


def test_drop_policy_discards_the_excess_before_any_hook_and_keeps_the_peer(start_server):
    app = guarded_app(rate_limit=(10, 5), rate_limit_policy="drop")
    server = start_server(app)
    client = connect(server)
    for i in range(50):
        client.send(f"m{i}")
    echoed = [client.recv() for _ in range(5)]  # the burst got through
    assert echoed == [f"m{i}" for i in range(5)]
    time.sleep(0.3)  # three tokens come back
    client.send("later")
    assert client.recv() == "later"
    assert list(app.received) == [*echoed, "later"]  # the hook never saw a dropped message
    assert server.stats()["rate_limited"] == 45
    client.close()


def test_byte_rate_limit_and_per_handler_overrides(start_server):
    app = guarded_app(rate_limit_bytes=(1000, 2000), rate_limit_policy="drop")
    server = start_server(app, rate_limit=(1000, 1000))
    client = connect(server)
    client.send("x" * 1500)
    assert client.recv() == "x" * 1500
    client.send("y" * 1500)  # 500 bytes left in the bucket: dropped
    client.send("z")
    assert client.recv() == "z"
    client.close()
    with pytest.raises(ConfigurationError, match="rate_limit"):
        define_websocket_handler(rate_limit=(0, 5))
    with pytest.raises(ConfigurationError, match="rate_limit_policy"):
        define_websocket_handler(rate_limit_policy="sleep")
