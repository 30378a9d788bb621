"""The raw stack syncws is built on: gevent's WSGI server with gevent-websocket's handler.

    python scripts/reference/gevent_websocket_server.py PORT

The same routes as scripts/bench_app.py, written the way a gevent-websocket
application would write them, with nothing else (no limits, no keepalive, no
overflow policy): the floor a gevent server can reach.

* ``/echo`` (and any other WebSocket path): every message is sent back.
* ``/fanout?role=sub|pub``: subscribers join a set; each message from a
  publisher is sent to every subscriber in turn with ``ws.send``.
* ``/sse?n=N[&rate=R]``: a plain WSGI generator yielding N events, flat out
  or paced at R events/s (paced events carry their ``time.time()``).
* ``/sse_topic``: a generator per stream fed by a gevent queue;
  ``/sse_publish?n=N&streams=S`` puts N events in every stream's queue.
"""

import resource
import sys
import time
from urllib.parse import parse_qs

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402
from gevent.queue import SimpleQueue  # noqa: E402
from geventwebsocket.exceptions import WebSocketError  # noqa: E402
from geventwebsocket.handler import WebSocketHandler  # noqa: E402

PACE_STEP = 0.01
subscribers: set = set()
feeds: set = set()
SSE_HEADERS = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]


def query(environ) -> dict:
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def sse(environ, start_response):
    args = query(environ)
    count, rate = int(args.get("n", 1000)), float(args.get("rate", 0))
    start_response("200 OK", SSE_HEADERS)
    if not rate:
        for i in range(count):
            yield f"data: event {i}\n\n".encode()
        return
    started, sent = time.monotonic(), 0
    while sent < count:
        due = min(count, int((time.monotonic() - started) * rate) + 1)
        yield "".join(f"data: event {i} {time.time():.6f}\n\n" for i in range(sent, due)).encode()
        sent = due
        gevent.sleep(PACE_STEP)


def sse_topic(environ, start_response):
    start_response("200 OK", SSE_HEADERS)
    queue = SimpleQueue()
    feeds.add(queue)
    try:
        yield b": subscribed\n\n"
        while True:
            yield queue.get()
    finally:
        feeds.discard(queue)


def sse_publish(environ, start_response):
    args = query(environ)
    count, streams = int(args.get("n", 1000)), int(args.get("streams", 1))
    deadline = time.monotonic() + 10
    while len(feeds) < streams and time.monotonic() < deadline:
        gevent.sleep(0.01)
    for i in range(count):
        event = f"data: event {i}\n\n".encode()
        for queue in list(feeds):
            queue.put(event)
        if i % 100 == 99:
            gevent.sleep(0)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"published"]


def fanout(ws, role: str) -> None:
    if role == "sub":
        subscribers.add(ws)
    ws.send("ready")
    try:
        while True:
            message = ws.receive()
            if message is None:
                break
            for sub in list(subscribers):
                try:
                    sub.send(message, binary=True)
                except WebSocketError:
                    subscribers.discard(sub)
    finally:
        subscribers.discard(ws)


def echo(ws) -> None:
    while True:
        message = ws.receive()
        if message is None:
            break
        ws.send(message, binary=not isinstance(message, str))  # binary messages arrive as bytearray


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/sse":
        return sse(environ, start_response)
    if path == "/sse_topic":
        return sse_topic(environ, start_response)
    if path == "/sse_publish":
        return sse_publish(environ, start_response)
    ws = environ.get("wsgi.websocket")
    if ws is None:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"gevent-websocket reference server"]
    if path == "/fanout":
        fanout(ws, query(environ).get("role", "sub"))
    else:
        echo(ws)
    return []


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    WSGIServer(("127.0.0.1", int(sys.argv[1])), app, handler_class=WebSocketHandler, log=None).serve_forever()
