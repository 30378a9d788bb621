"""syncws.testing.TestClient's whole API, against a Flask app, the way a user's tests would use it."""

from __future__ import annotations

import flask
import pytest

from syncws import EventStreamMessage, create_event_stream, define_websocket_handler
from syncws.testing import ConnectionClosed, HandshakeRefused, TestClient


def make_app() -> flask.Flask:
    app = flask.Flask(__name__)

    def message(peer, msg):
        text = msg.text()
        if text == "bye":
            peer.close(4001, "asked to leave")
        elif text == "json":
            peer.send({"user": flask.g.user, "items": [1, 2]})
        else:
            peer.send(msg)  # an echo, binary stays binary

    def upgrade(request):
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        return {"protocol": "chat.v2"} if "chat.v2" in offered else None

    echo = define_websocket_handler(
        upgrade=upgrade,
        open=lambda peer: peer.subscribe("news"),
        message=message,
    )

    @app.before_request
    def who():
        if flask.request.headers.get("Authorization") == "Bearer nope":
            flask.abort(401)
        flask.g.user = "alice"

    @app.get("/ws")
    def ws():
        return echo

    @app.get("/events")
    def events():
        stream = create_event_stream(flask.request, keep_alive=None)
        stream.push(EventStreamMessage(data="one", id="1", event="update", retry=1500))
        stream.push("two\nlines")
        stream.close()
        return stream

    @app.get("/live")
    def live():
        stream = create_event_stream(flask.request, keep_alive=None)
        stream.subscribe("news")
        stream.push("ready")
        return stream

    @app.post("/items")
    def items():
        return {"got": flask.request.get_json(), "user": flask.g.user}, 201

    @app.get("/hello")
    def hello():
        return "hello " + flask.request.args.get("name", "")

    return app


def test_websocket_send_receive_json_binary_and_close():
    with TestClient(make_app()) as client, client.websocket("/ws") as ws:
        ws.send("hi")
        assert ws.receive() == "hi"
        ws.send(b"\x00\x01")
        assert ws.receive() == b"\x00\x01"
        ws.send("json")
        assert ws.receive_json() == {"user": "alice", "items": [1, 2]}  # Flask's g works in hooks
        ws.send({"a": 1})
        assert ws.receive_json() == {"a": 1}
        ws.close(1000, "done")
        assert ws.close_code == 1000  # the server answered the close
        with pytest.raises(ConnectionClosed):
            ws.send("after close")


def test_subprotocols_and_headers_reach_the_upgrade():
    with TestClient(make_app()) as client:
        with client.websocket("/ws", subprotocols=["chat.v1", "chat.v2"]) as ws:
            assert ws.subprotocol == "chat.v2" and ws.headers["sec-websocket-protocol"] == "chat.v2"
        with client.websocket("/ws") as plain:
            assert plain.subprotocol == ""


def test_receive_times_out_and_reports_the_servers_close():
    with TestClient(make_app()) as client, client.websocket("/ws") as ws:
        with pytest.raises(TimeoutError):
            ws.receive(timeout=0.2)
        ws.send("bye")
        with pytest.raises(ConnectionClosed) as closed:
            ws.receive()
        assert (closed.value.code, closed.value.reason) == (4001, "asked to leave")
        assert (ws.close_code, ws.close_reason) == (4001, "asked to leave")


def test_a_refused_upgrade_raises_with_the_response():
    with TestClient(make_app()) as client:
        with pytest.raises(HandshakeRefused) as refused:
            client.websocket("/ws", headers={"Authorization": "Bearer nope"})
        assert refused.value.response.status_code == 401
        with pytest.raises(HandshakeRefused) as missing:
            client.websocket("/nothing-here")
        assert missing.value.response.status_code == 404


def test_event_stream_yields_events_and_ends_with_the_stream():
    with TestClient(make_app()) as client, client.event_stream("/events") as stream:
        assert stream.status_code == 200 and stream.headers["content-type"] == "text/event-stream"
        events = list(stream)
    assert [(e.event, e.data, e.id, e.retry) for e in events] == [
        ("update", "one", "1", 1500),
        ("message", "two\nlines", "1", None),  # the last id carries over, as in EventSource
    ]


def test_publish_reaches_websockets_and_streams():
    with TestClient(make_app()) as client, client.websocket("/ws") as ws, client.event_stream("/live") as stream:
        assert stream.next_event().data == "ready"
        ws.send("sync")  # the open hook ran (it subscribed) before this echo comes back
        assert ws.receive() == "sync"
        client.publish("news", {"headline": "tested"}, namespace="/ws")
        assert ws.receive_json() == {"headline": "tested"}
        client.publish("news", "to every namespace")
        assert ws.receive() == "to every namespace"
        assert stream.next_event().data == "to every namespace"


def test_plain_http_get_and_post():
    with TestClient(make_app()) as client:
        response = client.get("/hello?name=bob")
        assert (response.status_code, response.text) == (200, "hello bob")
        created = client.post("/items", json={"n": 1})
        assert created.status_code == 201 and created.json() == {"got": {"n": 1}, "user": "alice"}
        assert created.headers["content-type"] == "application/json"
        assert client.get("/missing").status_code == 404


def test_server_options_and_errors_outside_the_block():
    client = TestClient(make_app(), max_connections=1)
    with pytest.raises(RuntimeError, match="with block"):
        client.get("/hello")
    with client, client.websocket("/ws"):
        with pytest.raises(HandshakeRefused) as refused:
            client.websocket("/ws")
        assert refused.value.response.status_code == 503
    assert client.server is None


def test_the_pytest_fixture_starts_and_stops_clients(syncws_client):
    client = syncws_client(make_app())
    assert client.get("/hello?name=fixture").text == "hello fixture"
    with client.websocket("/ws") as ws:
        ws.send("via the fixture")
        assert ws.receive() == "via the fixture"
