"""The app the history, recovery and presence tests serve (in-process and in subprocesses).

* WebSocket ``/ws/<room>`` (namespace: the path): on open, subscribes to every
  ``?sub=`` topic with ``since=?since``, ``envelope=?envelope`` (``1``) and
  ``presence=?info`` (JSON), then sends ``{"ack": "open", "id": ...,
  "recovery": {topic: [recovered, replayed, offset]}, "pid": <the process>}``.  JSON commands:
  ``{"op": "pub", "topic": t, "data": d}`` (``peer.publish``),
  ``{"op": "presence", "topic": t}`` -> ``{"presence": [...]}``.
* ``/events?topic=t&ns=n[&since=s][&info=json]``: an event stream subscribed
  to the topics (``since`` defaults to Last-Event-ID); after the subscribes
  it pushes one ``recovery`` event whose data is the results as JSON.
* ``POST /publish`` (form: topic, data, ns, json=1 to send data as JSON, b64
  for bytes) -> ``server.publish``; ``/history?topic&ns&since&limit``,
  ``/presence?topic&ns`` and ``/stats`` answer JSON (bytes in a history as
  ``{"b64": ...}``).
"""

from __future__ import annotations

import base64
import json
import os

from syncws import App, EventStreamMessage, create_event_stream, current_server, define_websocket_handler


def _result(recovery):
    return [recovery.recovered, recovery.replayed, recovery.offset]


def _open(peer):
    args = peer.request.args
    info = json.loads(args["info"]) if "info" in args else None
    results = {}
    for topic in args.getlist("sub"):
        recovery = peer.subscribe(topic, since=args.get("since"), envelope=args.get("envelope") == "1", presence=info)
        results[topic] = _result(recovery)
    peer.send({"ack": "open", "id": peer.id, "recovery": results, "pid": os.getpid()})


def _message(peer, message):
    cmd = message.json()
    if cmd["op"] == "pub":
        peer.publish(cmd["topic"], cmd.get("data"))
    elif cmd["op"] == "presence":
        peer.send({"presence": peer.presence(cmd["topic"])})


app = App()
app.get("/ws/<room>", define_websocket_handler(open=_open, message=_message))


@app.get("/events")
def events(request):
    args = request.args
    stream = create_event_stream(request, namespace=args.get("ns"), keep_alive=None)
    options = {}
    if "since" in args:
        options["since"] = args["since"] or None
    if "info" in args:
        options["presence"] = json.loads(args["info"])
    results = {topic: _result(stream.subscribe(topic, **options)) for topic in args.getlist("topic")}
    stream.push(EventStreamMessage(event="recovery", data=json.dumps(results)))
    return stream


@app.post("/publish")
def publish(request):
    form = request.form
    if "b64" in form:
        data = base64.b64decode(form["b64"])
    elif form.get("json") == "1":
        data = json.loads(form["data"])
    else:
        data = form["data"]
    current_server().publish(form["topic"], data, namespace=form.get("ns") or None)
    return {"ok": True}


@app.get("/history")
def history(request):
    args = request.args
    limit = int(args["limit"]) if "limit" in args else None
    entries = current_server().history(args["topic"], args.get("ns"), since=args.get("since"), limit=limit)

    def shown(data):
        return {"b64": base64.b64encode(data).decode()} if isinstance(data, bytes) else data

    return {"entries": [[offset, shown(data)] for offset, data in entries]}


@app.get("/presence")
def presence(request):
    server = current_server()
    topic, namespace = request.args["topic"], request.args.get("ns")
    return {"presence": server.presence(topic, namespace), "count": server.presence_count(topic, namespace)}


@app.get("/stats")
def stats(request):
    broker = current_server().broker
    return {"pid": os.getpid(), "connected": getattr(broker, "connected", None)}
