"""The app the broker tests serve, in subprocesses (``python -m syncws``) and in-process.

WebSocket peers (on ``/_ws`` and ``/rooms/<name>``, so the namespace is the
path) subscribe to every ``?sub=`` topic on open and answer ``{"ack": "open"}``;
then JSON commands drive them:

* ``{"op": "sub"|"unsub", "topic": t}`` -> ``{"ack": op, "topic": t}``
* ``{"op": "pub", "topic": t, "data": d}`` (``"b64"`` instead of ``"data"``
  publishes bytes) -> ``peer.publish``; ``{"ack": "pub"}`` unless ``"ack": false``
* ``{"op": "server-pub", "topic": t, "data": d, "namespace": ns}`` -> ``server.publish``
* ``{"op": "ping"}`` -> ``{"ack": "ping"}``

``/events?topic=t&ns=n`` is an SSE stream subscribed to the topics (first
event: ``ready``); ``/stats`` reports the broker's state as JSON.
"""

from __future__ import annotations

import base64

from syncws import App, EventStreamMessage, create_event_stream, define_websocket_handler


def _open(peer):
    for topic in peer.request.args.getlist("sub"):
        peer.subscribe(topic)
    peer.send({"ack": "open", "id": peer.id, "namespace": peer.namespace})


def _message(peer, message):
    cmd = message.json()
    op = cmd["op"]
    ack = cmd.get("ack", True)
    if op in ("sub", "unsub"):
        getattr(peer, op + "scribe")(cmd["topic"])
    elif op == "pub":
        data = base64.b64decode(cmd["b64"]) if "b64" in cmd else cmd.get("data")
        peer.publish(cmd["topic"], data)
    elif op == "server-pub":
        data = base64.b64decode(cmd["b64"]) if "b64" in cmd else cmd.get("data")
        peer.server.publish(cmd["topic"], data, namespace=cmd.get("namespace"))
    elif op != "ping":
        raise ValueError(f"unknown op {op!r}")
    if ack:
        peer.send({"ack": op, "topic": cmd.get("topic")})


handler = define_websocket_handler(open=_open, message=_message)

app = App()
app.get("/_ws", handler)
app.get("/rooms/<name>", handler)


@app.get("/events")
def events(request):
    stream = create_event_stream(request, namespace=request.args.get("ns"), keep_alive=None)
    for topic in request.args.getlist("topic"):
        stream.subscribe(topic)
    stream.push(EventStreamMessage(event="ready", data=stream.namespace))
    return stream


@app.get("/stats")
def stats(request):
    from syncws import current_server

    server = current_server()
    broker = server.broker
    return {
        "peers": len(server.peers),
        "broker": type(broker).__name__,
        "connected": getattr(broker, "connected", None),
        "channels": sorted(getattr(broker, "channels", ())),
        "dropped": getattr(broker, "dropped", None),
    }
