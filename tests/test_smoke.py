from syncws import App, define_websocket_handler

from .conftest import connect


def test_echo_roundtrip(start_server):
    app = App()
    app.get("/_ws", define_websocket_handler(message=lambda peer, msg: peer.send(msg)))
    server = start_server(app)
    client = connect(server)
    client.send("hello")
    assert client.recv() == "hello"
    client.close()
