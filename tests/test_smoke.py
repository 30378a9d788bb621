"""The shortest path through the product: an app, a server, a client, over real sockets."""

from syncws import App, create_event_stream, define_websocket_handler
from syncws.testing import TestClient

from .conftest import connect


def test_echo_roundtrip(start_server):
    app = App()
    app.get("/_ws", define_websocket_handler(message=lambda peer, msg: peer.send(msg)))
    server = start_server(app)
    client = connect(server)
    client.send("hello")
    assert client.recv() == "hello"
    client.close()


def test_the_same_through_the_test_client():
    """What a user's own test looks like (syncws.testing): WebSocket, event stream, HTTP and pub/sub."""
    app = App()
    app.get(
        "/_ws",
        define_websocket_handler(open=lambda peer: peer.subscribe("news"), message=lambda peer, msg: peer.send(msg)),
    )
    app.get("/", lambda request: {"ok": True})

    @app.get("/events")
    def events(request):
        stream = create_event_stream(request, keep_alive=None)
        stream.subscribe("news")
        stream.push("subscribed")
        return stream

    with TestClient(app) as client, client.websocket("/_ws") as ws, client.event_stream("/events") as stream:
        assert client.get("/").json() == {"ok": True}
        ws.send("hello")
        assert ws.receive() == "hello"
        assert stream.next_event().data == "subscribed"
        client.publish("news", {"n": 1})
        assert ws.receive_json() == {"n": 1}
        assert stream.next_event().data == '{"n":1}'
