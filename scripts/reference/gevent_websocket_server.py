"""The raw stack syncws is built on: gevent's WSGI server with gevent-websocket's handler.

    python scripts/reference/gevent_websocket_echo.py PORT

``/echo`` sends every message back, as syncws's bench app does; ``/sse?n=N`` is
a plain WSGI generator yielding N ``text/event-stream`` events.  Nothing else
(no limits, no keepalive, no pub/sub): the floor a gevent server can reach.
"""

import resource
import sys

from gevent import monkey

monkey.patch_all()

from gevent.pywsgi import WSGIServer  # noqa: E402
from geventwebsocket.handler import WebSocketHandler  # noqa: E402


def sse(environ, start_response):
    count = int(environ.get("QUERY_STRING", "n=1000").partition("n=")[2] or 1000)
    start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
    for i in range(count):
        yield f"data: event {i}\n\n".encode()


def app(environ, start_response):
    if environ["PATH_INFO"] == "/sse":
        return sse(environ, start_response)
    ws = environ.get("wsgi.websocket")
    if ws is None:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"gevent-websocket echo"]
    while True:
        message = ws.receive()
        if message is None:
            break
        ws.send(message)
    return []


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    WSGIServer(("127.0.0.1", int(sys.argv[1])), app, handler_class=WebSocketHandler, log=None).serve_forever()
