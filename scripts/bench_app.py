"""The server side of scripts/bench: run as ``python -m syncws bench_app:app``.

Routes:

* ``/echo``: every message is sent back to its sender.
* ``/sse?n=N``: an event stream that pushes N events as fast as it can, then
  ends; ``/sse?n=N&rate=R`` pushes them at R events/s (each carries its
  ``time.time()``, for latency); ``/sse?n=N&yield=1`` yields to the hub after
  every push, as a producer that pushes as things happen does;
  ``/sse?n=N&rate=R&batch=1`` pushes what is due at each step as one list.
* ``/sse_topic``: an event stream subscribed to the ``feed`` topic;
  ``/sse_publish?n=N&streams=S`` waits until S such streams are open, then
  publishes N events to ``feed`` as fast as it can (each stream gets all N).
* ``/fanout?role=sub``: subscribes to the ``bench`` topic;
  ``/fanout?role=pub``: every message it sends is published to ``bench``.
  Both get ``"ready"`` once their ``open`` hook has run, so the bench knows
  every subscription is in place before it starts publishing.
* ``/channels``: a channels endpoint (``syncws.v1``) where clients may
  publish to any topic (scripts/bench_channels).
"""

import os
import resource
import time

import gevent

from syncws import App, Channels, create_event_stream, define_websocket_handler, publish

if os.environ.get("BENCH_TRACING_SDK"):  # scripts/bench_tracing: an SDK that samples and exports every span
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class _Discard(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    _provider = TracerProvider()
    _provider.add_span_processor(BatchSpanProcessor(_Discard()))
    trace.set_tracer_provider(_provider)

TOPIC = "bench"
FEED = "feed"
PACE_STEP = 0.01  # a paced producer pushes what is due every 10 ms
feed_streams = [0]  # /sse_topic streams open now


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
    rate = float(request.args.get("rate", "0"))
    every = 1 if request.args.get("yield") else 100
    batch = bool(request.args.get("batch"))
    stream = create_event_stream(request, keep_alive=None)

    def flat_out() -> None:
        for i in range(count):
            stream.push(f"event {i}")
            if i % every == every - 1:
                gevent.sleep(0)  # let the response greenlet write, as a real producer would
        stream.close()

    def paced() -> None:
        started, sent = time.monotonic(), 0
        while sent < count:
            due = min(count, int((time.monotonic() - started) * rate) + 1)
            if batch:  # several events sent together, as the reference yields them
                stream.push([f"event {i} {time.time():.6f}" for i in range(sent, due)])
            else:
                for i in range(sent, due):
                    stream.push(f"event {i} {time.time():.6f}")
            sent = due
            gevent.sleep(PACE_STEP)
        stream.close()

    gevent.spawn(paced if rate else flat_out)
    return stream


def sse_topic(request):
    stream = create_event_stream(request, keep_alive=None)
    stream.subscribe(FEED)
    feed_streams[0] += 1
    stream.on_closed(lambda: feed_streams.__setitem__(0, feed_streams[0] - 1))
    return stream


def sse_publish(request):
    count = int(request.args.get("n", "1000"))
    streams = int(request.args.get("streams", "1"))
    deadline = time.monotonic() + 10
    while feed_streams[0] < streams and time.monotonic() < deadline:
        gevent.sleep(0.01)
    for i in range(count):
        publish(FEED, f"event {i}")
        if i % 100 == 99:
            gevent.sleep(0)
    return f"published {count} to {feed_streams[0]} streams"


raise_open_file_limit()

app = App()
app.get("/", lambda request: "syncws bench app: WebSockets at /echo and /fanout")


@app.get("/sleep")
def sleep(request):
    """A view that blocks: ``time.sleep`` (it yields only when the process is monkey-patched)."""
    time.sleep(float(request.args.get("s", "2")))
    return "slept"


app.get("/echo", define_websocket_handler(message=echo, max_message_size=32 * 1024 * 1024))
app.get("/sse", sse)
app.get("/sse_topic", sse_topic)
app.get("/sse_publish", sse_publish)
app.get("/fanout", define_websocket_handler(open=fanout_open, message=fanout_message))
app.get("/channels", Channels(authorize=lambda peer, action, topic: True))
