"""The server side of scripts/bench: run as ``python -m syncws bench_app:app``.

Routes:

* ``/echo``: every message is sent back to its sender.
* ``/sse?n=N``: an event stream that pushes N events as fast as it can, then ends.
* ``/fanout?role=sub``: subscribes to the ``bench`` topic;
  ``/fanout?role=pub``: every message it sends is published to ``bench``.
  Both get ``"ready"`` once their ``open`` hook has run, so the bench knows
  every subscription is in place before it starts publishing.
"""

import resource

import gevent

from syncws import App, create_event_stream, define_websocket_handler

TOPIC = "bench"


def raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def echo(peer, message):
    peer.send(message)


def fanout_open(peer):
    if peer.request.args.get("role") == "sub":
        peer.subscribe(TOPIC)
    peer.send("ready")


def fanout_message(peer, message):
    peer.publish(TOPIC, message)


def sse(request):
    count = int(request.args.get("n", "1000"))
    stream = create_event_stream(request, keep_alive=None)

    def pump() -> None:
        for i in range(count):
            stream.push(f"event {i}")
            if i % 100 == 99:
                gevent.sleep(0)  # let the response greenlet write, as a real producer would
        stream.close()

    gevent.spawn(pump)
    return stream


raise_open_file_limit()

app = App()
app.get("/", lambda request: "syncws bench app: WebSockets at /echo and /fanout")
app.get("/echo", define_websocket_handler(message=echo))
app.get("/sse", sse)
app.get("/fanout", define_websocket_handler(open=fanout_open, message=fanout_message))
