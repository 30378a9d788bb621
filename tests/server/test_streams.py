"""Server-Sent Events over real sockets.

Streams are read with ordinary HTTP clients (``http.client``, ``requests``,
raw sockets) and parsed by :class:`SSEParser`, which follows the WHATWG
event-stream interpretation rules, so the assertions are about what a browser's
``EventSource`` would dispatch; exact-bytes assertions pin the wire format.

Absence of an event is proven with ordering, not sleeps: pushes and publishes
all reach a stream through the server's hub in FIFO order, so once a later
"marker" event has arrived, an earlier one that should not have come would
have arrived before it.
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import queue
import re
import socket
import struct
import threading
import time
import wsgiref.util
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager

import flask
import gevent
import pytest
import requests

import syncws
from syncws import (
    App,
    ConfigurationError,
    EventStream,
    EventStreamMessage,
    create_event_stream,
    define_websocket_handler,
)
from syncws.protocol.sse import HEADERS

from ..conftest import connect, wait_until
from ..support.memory import live_greenlets
from ..support.sse import SSEClient, SSEEvent, SSEParser

CACHE_CONTROL = "private, no-cache, no-store, no-transform, must-revalidate, max-age=0"


def raw_stream(server, path: str, *, version: str = "HTTP/1.0", extra: str = "") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(f"GET {path} {version}\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{extra}\r\n".encode())
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    chunks: list[bytes] = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def read_head(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, bytes]:
    """Read until the end of the response head; return (head, body bytes so far)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before the head ended: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


# -- apps -----------------------------------------------------------------------


def stream_app(path: str = "/sse", *, setup: Callable | None = None, **options):
    """An App whose ``path`` opens a stream with ``options``; opened streams go to the queue.

    ``setup(stream, request)`` runs in the view before it returns.
    """
    app = App()
    opened: queue.Queue[EventStream] = queue.Queue()

    def view(request, **_):
        stream = create_event_stream(request, **options)
        if setup is not None:
            setup(stream, request)
        opened.put(stream)
        return stream

    app.get(path, view)
    return app, opened


@pytest.fixture
def sse_server(start_server):
    """Start an App from :func:`stream_app`; returns ``(server, opened_streams)``."""

    def start(path: str = "/sse", *, setup: Callable | None = None, threads: str = "auto", **options):
        app, opened = stream_app(path, setup=setup, **options)
        return start_server(app, threads=threads), opened

    return start


@pytest.fixture
def sse_stream(sse_server):
    """``with sse_stream() as (server, client, stream):`` a server from :func:`sse_server` (no keep-alive
    comments), an :class:`SSEClient` reading its /sse, and the stream that request opened.
    """

    @contextmanager
    def open_stream() -> Iterator[tuple]:
        server, opened = sse_server(keep_alive=None)
        with SSEClient(server) as client:
            yield server, client, opened.get(timeout=5)

    return open_stream


def subscribe_from_query(stream, request):
    for topic in request.args.getlist("topic"):
        stream.subscribe(topic)


# -- response head ----------------------------------------------------------------


def test_headers_are_exactly_the_spec_ones_and_none_is_hop_by_hop(start_server):
    app, opened = stream_app()
    seen: list = []

    def capturing(environ, start_response):
        def capture(status, headers, exc_info=None):
            seen.append((status, list(headers)))
            return start_response(status, headers, exc_info)

        return app(environ, capture)

    server = start_server(capturing)
    with SSEClient(server) as client:
        assert client.status == 200
        # What the application hands to the server (PEP 3333: no hop-by-hop headers)
        assert seen == [("200 OK", HEADERS)]
        assert HEADERS == [
            ("Content-Type", "text/event-stream"),
            ("Cache-Control", CACHE_CONTROL),
            ("X-Accel-Buffering", "no"),
        ]
        assert not [name for name, _ in seen[0][1] if wsgiref.util.is_hop_by_hop(name)]
        # What the client sees
        assert client.header("Content-Type") == "text/event-stream"
        assert client.header("Cache-Control") == CACHE_CONTROL
        assert client.header("X-Accel-Buffering") == "no"
        assert client.header("Content-Length") is None
        opened.get(timeout=5).close()
        client.wait_eof()


def test_head_arrives_before_the_first_push(sse_server):
    server, opened = sse_server()
    with SSEClient(server) as client:  # getresponse() returned: the head is here
        stream = opened.get(timeout=5)
        assert client.status == 200
        assert client.raw == b""
        stream.push("first")
        assert client.next_event() == SSEEvent("message", "first", "")


def test_pushes_made_before_the_view_returns_are_delivered_in_order(sse_server):
    def setup(stream, request):
        stream.push("one")
        stream.push({"event": "two", "data": "2"})
        stream.push_comment("three")
        stream.push(["four", "five"])

    server, _opened = sse_server(setup=setup)
    with SSEClient(server) as client:
        assert client.next_events(4) == [
            SSEEvent("message", "one", ""),
            SSEEvent("two", "2", ""),
            SSEEvent("message", "four", ""),
            SSEEvent("message", "five", ""),
        ]
        assert bytes(client.raw) == (b"data: one\n\nevent: two\ndata: 2\n\n: three\n\ndata: four\n\ndata: five\n\n")


def test_each_event_reaches_the_client_as_it_is_pushed(sse_stream):
    with sse_stream() as (_server, client, stream):
        for n in range(10):
            stream.push(f"event {n}")
            # nothing else is pushed until this one has been read: no buffering anywhere
            assert client.next_event() == SSEEvent("message", f"event {n}", "")
        assert bytes(client.raw) == b"".join(f"data: event {n}\n\n".encode() for n in range(10))


def test_a_requests_stream_sees_events_one_by_one(sse_server):
    server, opened = sse_server(keep_alive=None)
    response = requests.get(server.url + "/sse", stream=True, timeout=5, headers={"Accept": "text/event-stream"})
    try:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        stream = opened.get(timeout=5)
        parser = SSEParser()
        chunks = response.iter_content(chunk_size=None)
        for n in range(3):
            stream.push({"id": str(n), "data": f"tick {n}"})
            while len(parser.events) <= n:
                parser.feed(next(chunks))
            assert parser.events[n] == SSEEvent("message", f"tick {n}", str(n))
        stream.close()
        rest = b"".join(chunks)  # ends: the server finished the response
        assert rest == b""
    finally:
        response.close()


# -- message kinds and the wire format ------------------------------------------------


def test_every_message_kind_exact_bytes_and_as_a_browser_sees_it(sse_stream):
    with sse_stream() as (_server, client, stream):
        stream.push("plain")
        stream.push(["a", "b"])
        stream.push({"data": "d", "id": "7", "event": "e", "retry": 1500})
        stream.push(EventStreamMessage(data="m", event="kind"))
        stream.push([{"data": "x", "id": "8"}, EventStreamMessage(data="y"), "z"])
        stream.push({"data": "only data"})
        stream.push_comment("just a comment")
        stream.push("end")
        events = client.next_events(9)
        assert events == [
            SSEEvent("message", "plain", ""),
            SSEEvent("message", "a", ""),
            SSEEvent("message", "b", ""),
            SSEEvent("e", "d", "7"),
            SSEEvent("kind", "m", "7"),  # lastEventId persists until a new id
            SSEEvent("message", "x", "8"),
            SSEEvent("message", "y", "8"),
            SSEEvent("message", "z", "8"),
            SSEEvent("message", "only data", "8"),
        ]
        assert client.next_event() == SSEEvent("message", "end", "8")
        assert client.parser.retry == 1500
        assert client.parser.comments == ["just a comment"]
        assert bytes(client.raw) == (
            b"data: plain\n\n"
            b"data: a\n\ndata: b\n\n"
            b"id: 7\nevent: e\nretry: 1500\ndata: d\n\n"
            b"event: kind\ndata: m\n\n"
            b"id: 8\ndata: x\n\ndata: y\n\ndata: z\n\n"
            b"data: only data\n\n"
            b": just a comment\n\n"
            b"data: end\n\n"
        )


FIELD_COMBINATIONS = [
    dict(zip(("id", "event", "retry"), values, strict=False))
    for values in [
        (None, None, None),
        ("1", None, None),
        (None, "ev", None),
        (None, None, 100),
        ("2", "ev", None),
        ("3", None, 200),
        (None, "ev", 300),
        ("4", "ev", 400),
    ]
]


def test_every_field_combination_over_the_wire(sse_stream):
    with sse_stream() as (_server, client, stream):
        last_id = ""
        for n, fields in enumerate(FIELD_COMBINATIONS):
            message = {k: v for k, v in fields.items() if v is not None}
            message["data"] = f"payload {n}"
            start = len(client.raw)
            stream.push(message)
            event = client.next_event()
            if fields["id"] is not None:
                last_id = fields["id"]
            assert event == SSEEvent(fields["event"] or "message", f"payload {n}", last_id)
            if fields["retry"] is not None:
                assert client.parser.retry == fields["retry"]
            expected = ""
            if fields["id"] is not None:
                expected += f"id: {fields['id']}\n"
            if fields["event"] is not None:
                expected += f"event: {fields['event']}\n"
            if fields["retry"] is not None:
                expected += f"retry: {fields['retry']}\n"
            expected += f"data: payload {n}\n\n"
            assert bytes(client.raw[start:]) == expected.encode()


def test_multi_line_data_and_injection_attempts(sse_stream):
    with sse_stream() as (_server, client, stream):
        stream.push("line1\r\nline2\rline3\nline4")
        stream.push("x\n\nevent: evil\nid: 666\nretry: 1\ndata: pwned")
        stream.push({"event": "update\n\ndata: evil", "id": "7\r\nevent: evil", "data": "ok"})
        stream.push({"data": "trailing\n"})
        stream.push({"data": "\r\n\r\n"})
        stream.push("")
        stream.push_comment("c1\ndata: injected\r\n\r\nevent: x")
        stream.push("end")
        assert client.next_events(7) == [
            SSEEvent("message", "line1\nline2\nline3\nline4", ""),
            SSEEvent("message", "x\n\nevent: evil\nid: 666\nretry: 1\ndata: pwned", ""),
            SSEEvent("updatedata: evil", "ok", "7event: evil"),
            SSEEvent("message", "trailing\n", "7event: evil"),
            SSEEvent("message", "\n\n", "7event: evil"),
            SSEEvent("message", "", "7event: evil"),
            SSEEvent("message", "end", "7event: evil"),
        ]
        assert client.parser.retry is None  # no retry was injected
        assert client.parser.comments == ["c1", "data: injected", "", "event: x"]
        assert bytes(client.raw) == (
            b"data: line1\ndata: line2\ndata: line3\ndata: line4\n\n"
            b"data: x\ndata: \ndata: event: evil\ndata: id: 666\ndata: retry: 1\ndata: data: pwned\n\n"
            b"id: 7event: evil\nevent: updatedata: evil\ndata: ok\n\n"
            b"data: trailing\ndata: \n\n"
            b"data: \ndata: \ndata: \n\n"
            b"data: \n\n"
            b": c1\n: data: injected\n: \n: event: x\n\n"
            b"data: end\n\n"
        )


def test_non_integer_retry_is_not_written(sse_stream):
    with sse_stream() as (_server, client, stream):
        for retry in (1.5, "3000", True, None):
            stream.push({"data": repr(retry), "retry": retry})
        stream.push({"data": "int", "retry": 0})
        assert [e.data for e in client.next_events(5)] == ["1.5", "'3000'", "True", "None", "int"]
        assert bytes(client.raw) == (
            b"data: 1.5\n\ndata: '3000'\n\ndata: True\n\ndata: None\n\nretry: 0\ndata: int\n\n"
        )


def test_text_is_utf8_on_the_wire(sse_stream):
    with sse_stream() as (_server, client, stream):
        text = "héllo — ✓ 😀 \u2028 still one line"
        stream.push({"data": text, "event": "ünï", "id": "ид"})
        stream.push_comment("ß")
        assert client.next_event() == SSEEvent("ünï", text, "ид")
        stream.push("end")
        client.next_event()
        expected = f"id: ид\nevent: ünï\ndata: {text}\n\n: ß\n\ndata: end\n\n".encode()
        assert bytes(client.raw) == expected


def test_comments(sse_stream):
    with sse_stream() as (_server, client, stream):
        stream.push_comment("hello")
        stream.push_comment("a\nb\r\nc")
        stream.push_comment("")
        stream.push("marker")
        assert client.next_event() == SSEEvent("message", "marker", "")
        assert client.events == [SSEEvent("message", "marker", "")]  # comments dispatch nothing
        assert client.parser.comments == ["hello", "a", "b", "c", ""]
        assert bytes(client.raw) == b": hello\n\n: a\n: b\n: c\n\n: \n\ndata: marker\n\n"


# -- options --------------------------------------------------------------------------


def test_retry_option_is_written_once_at_the_start(sse_server):
    def setup(stream, request):
        stream.push("early")

    server, opened = sse_server(retry=2500, keep_alive=0.1, setup=setup)
    with SSEClient(server) as client:
        stream = opened.get(timeout=5)
        assert client.next_event() == SSEEvent("message", "early", "")
        assert client.parser.retry == 2500
        client.read_until(lambda: len(client.parser.comments) >= 2, what="two keep-alives")
        stream.push("later")
        client.next_event()
        assert bytes(client.raw).startswith(b"retry: 2500\n\ndata: early\n\n")
        assert bytes(client.raw).count(b"retry:") == 1


def test_exact_body_bytes_over_http_1_0(sse_server):
    """HTTP/1.0: no chunked framing, the body on the socket is the event stream itself."""

    def setup(stream, request):
        stream.push("early")
        stream.push({"id": "1", "event": "e", "data": "x\ny"})

    server, opened = sse_server(retry=2500, keep_alive=None, setup=setup)
    with raw_stream(server, "/sse") as sock:
        head, body = read_head(sock)
        stream = opened.get(timeout=5)
        assert head.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 "))
        assert b"\r\ncontent-type: text/event-stream\r\n" in head.lower() + b"\r\n"
        assert b"transfer-encoding" not in head.lower()
        assert b"content-length" not in head.lower()
        stream.push_comment("bye")
        stream.close()
        body += read_until_closed(sock)
    assert body == b"retry: 2500\n\ndata: early\n\nid: 1\nevent: e\ndata: x\ndata: y\n\n: bye\n\n"


def test_keep_alive_comment_is_sent_when_idle(sse_server):
    server, opened = sse_server(keep_alive=0.2)
    with SSEClient(server) as client:
        stream = opened.get(timeout=5)
        assert stream.keep_alive == 0.2
        client.read_until(lambda: len(client.parser.comments) >= 3, timeout=10, what="three keep-alives")
        assert client.events == []
        assert set(client.parser.comments) == {"keep-alive"}
        assert bytes(client.raw).startswith(b": keep-alive\n\n")
        stream.push("after")
        assert client.next_event() == SSEEvent("message", "after", "")


def test_keep_alive_none_disables_it_and_default_is_15(sse_server):
    server, opened = sse_server(path="/off", keep_alive=None)
    with SSEClient(server, "/off") as client:
        stream = opened.get(timeout=5)
        assert stream.keep_alive is None
        time.sleep(0.8)  # four 0.2 s intervals: a keep-alive would have come by now
        stream.push("marker")
        assert client.next_event() == SSEEvent("message", "marker", "")
        assert bytes(client.raw) == b"data: marker\n\n"

    server, opened = sse_server(path="/default")
    with SSEClient(server, "/default") as client:
        assert opened.get(timeout=5).keep_alive == 15


def test_last_event_id_header(sse_server):
    server, opened = sse_server(keep_alive=None)
    with SSEClient(server, headers={"Last-Event-ID": "41"}):
        assert opened.get(timeout=5).last_event_id == "41"
    with SSEClient(server):
        assert opened.get(timeout=5).last_event_id is None


BAD_OPTIONS = [
    {"retry": -1},
    {"retry": 1.5},
    {"retry": "3000"},
    {"retry": True},
    {"keep_alive": 0},
    {"keep_alive": -1},
    {"keep_alive": -0.5},
    {"keep_alive": "15"},
    {"keep_alive": True},
    {"keep_alive": float("nan")},
    {"keep_alive": float("inf")},
]


def test_invalid_options_and_arguments(start_server):
    app = App()
    results: list = []

    @app.get("/check")
    def check(request):
        for options in BAD_OPTIONS:
            try:
                create_event_stream(request, **options)
            except Exception as exc:
                results.append((repr(options), type(exc)))
            else:
                results.append((repr(options), None))
        # A bad value is a ConfigurationError, which is also a ValueError.
        try:
            create_event_stream(request, keepalive=1)  # misspelt option
        except TypeError:
            results.append(("unknown option", TypeError))
        return "done"

    server = start_server(app)
    assert requests.get(server.url + "/check", timeout=5).text == "done"
    assert results == [(repr(options), ConfigurationError) for options in BAD_OPTIONS] + [("unknown option", TypeError)]
    assert issubclass(ConfigurationError, ValueError)
    assert not server.streams
    for bad in (123, "GET /", None, b"environ"):
        with pytest.raises(TypeError):
            create_event_stream(bad)


def test_bad_pushes_raise_and_send_nothing(sse_stream):
    with sse_stream() as (_server, client, stream):
        with pytest.raises(TypeError):
            stream.push(object())
        with pytest.raises(TypeError):
            stream.push(42)
        with pytest.raises(TypeError):
            stream.push(["fine", object()])  # a list is all or nothing
        with pytest.raises(ValueError):
            stream.push({"data": "x", "bogus": 1})
        with pytest.raises(ValueError):
            stream.push([{"data": "ok"}, {"data": "x", "name": "y"}])
        with pytest.raises(TypeError):
            EventStreamMessage("positional")  # keywords only
        stream.push("marker")
        assert client.next_event() == SSEEvent("message", "marker", "")
        assert bytes(client.raw) == b"data: marker\n\n"


# -- the views that can return a stream -------------------------------------------------


def _view(kind: str, send: bool):
    """``build(opened)`` for ``kind`` "app" (an App), "flask" or "wsgi" (a plain WSGI function): its /sse
    view opens a stream, pushes "early", puts the stream in ``opened`` and returns it (its send() if ``send``).
    """

    def build(opened):
        def early_stream(request):
            stream = create_event_stream(request)
            stream.push("early")
            opened.put(stream)
            return stream.send() if send else stream

        if kind == "app":
            app = App()
            app.get("/sse", early_stream)
            return app
        if kind == "flask":
            app = flask.Flask(f"flask_sse_{send}")
            app.add_url_rule("/sse", "sse", lambda: early_stream(flask.request))
            return app

        def application(environ, start_response):
            if environ["PATH_INFO"] != "/sse":
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"not found"]
            return early_stream(environ)(environ, start_response)

        return application

    return build


@pytest.mark.parametrize(
    "build",
    [_view(kind, send) for kind in ("app", "flask", "wsgi") for send in (False, True)],
    ids=["app-stream", "app-send", "flask-stream", "flask-send", "wsgi-stream", "wsgi-send"],
)
def test_stream_from_every_kind_of_view(start_server, build):
    opened: queue.Queue = queue.Queue()
    server = start_server(build(opened))
    with SSEClient(server, headers={"Last-Event-ID": "9"}) as client:
        assert client.status == 200
        assert client.header("Content-Type") == "text/event-stream"
        assert client.header("Cache-Control") == CACHE_CONTROL
        assert client.header("X-Accel-Buffering") == "no"
        stream = opened.get(timeout=5)
        assert isinstance(stream, EventStream)
        assert stream.last_event_id == "9"
        assert stream.namespace == "/sse"
        ended = threading.Event()
        stream.on_closed(ended.set)
        assert client.next_event() == SSEEvent("message", "early", "")
        for n in range(3):
            stream.push({"id": str(n), "data": f"n={n}"})
            assert client.next_event() == SSEEvent("message", f"n={n}", str(n))
        stream.subscribe("t")
        server.publish("t", {"from": "publish"})
        assert client.next_event() == SSEEvent("message", '{"from":"publish"}', "2")
        stream.close()
        client.wait_eof()
        assert ended.wait(5)
    assert wait_until(lambda: not server.streams)
    assert server.registry.counts() == {"peers": 0, "topics": 0, "subscribers": 0}


# -- pushing from anywhere --------------------------------------------------------------


def test_push_from_plain_threads(sse_stream):
    with sse_stream() as (_server, client, stream):

        def pusher(name):
            for n in range(25):
                stream.push({"event": name, "data": str(n)})

        threads = [threading.Thread(target=pusher, args=(f"t{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        events = client.next_events(100)
        for i in range(4):
            # every event arrives, and each thread's in the order it pushed them
            assert [e.data for e in events if e.type == f"t{i}"] == [str(n) for n in range(25)]

        def last_words():
            stream.push({"event": "done", "data": "bye"})
            stream.close()  # what this thread pushed before closing is still delivered
            stream.push("dropped")

        closer = threading.Thread(target=last_words)
        closer.start()
        closer.join(5)
        client.wait_eof()
        assert client.events[-1] == SSEEvent("done", "bye", "")
        assert bytes(client.raw).endswith(b"event: done\ndata: bye\n\n")


def test_push_and_close_from_a_greenlet_of_the_server(sse_server):
    callbacks: list = []

    def setup(stream, request):
        def loop():
            for n in range(5):
                gevent.sleep(0.01)
                stream.push(f"tick {n}")
            stream.close()
            stream.push("ignored after close")

        stream.on_closed(lambda: callbacks.append("closed"))
        gevent.spawn(loop)

    # gevent.spawn in a view needs the view in the hub (threads off; a view in a pool thread
    # starts OS threads instead: docs/how-to/embedding.md)
    server, _opened = sse_server(setup=setup, keep_alive=None, threads="off")
    with SSEClient(server) as client:
        client.wait_eof()
        assert [e.data for e in client.events] == [f"tick {n}" for n in range(5)]
    assert wait_until(lambda: callbacks == ["closed"])


# -- ending: on_closed, close() ------------------------------------------------------------


def test_close_runs_every_callback_once_and_later_pushes_are_ignored(sse_server, caplog):
    server, opened = sse_server(keep_alive=None)
    calls: list = []
    with SSEClient(server) as client:
        stream = opened.get(timeout=5)

        def boom():
            calls.append("boom")
            raise RuntimeError("callback failure")

        stream.on_closed(lambda: calls.append("first"))
        stream.on_closed(boom)
        stream.on_closed(lambda: calls.append("third"))
        stream.push("before")
        assert client.next_event().data == "before"
        assert not stream.closed
        with caplog.at_level(logging.ERROR, logger="syncws"):
            stream.close()
            stream.close()  # idempotent
            stream.push("after close")
            stream.push_comment("after close")
            client.wait_eof()
            assert wait_until(lambda: calls == ["first", "boom", "third"])
            assert wait_until(lambda: any("callback failure" in str(r.exc_info) for r in caplog.records))
        assert stream.closed
        assert [e.data for e in client.events] == ["before"]
        assert bytes(client.raw) == b"data: before\n\n"

        # registered after the end: runs at once, in the caller's thread
        here: list = []
        stream.on_closed(lambda: here.append(threading.current_thread()))
        assert here == [threading.current_thread()]
        stream.on_closed(boom)  # logged, not raised
        stream.close()
        time.sleep(0.1)
        assert calls == ["first", "boom", "third", "boom"]
    assert wait_until(lambda: not server.streams)


def test_push_then_close_in_the_view_sends_a_one_shot_response(sse_server):
    calls: list = []

    def setup(stream, request):
        stream.on_closed(lambda: calls.append("closed"))
        stream.push({"id": "1", "data": "only"})
        stream.close()
        stream.push("dropped")

    server, _opened = sse_server(setup=setup, keep_alive=None)
    with SSEClient(server) as client:
        client.wait_eof()
        assert bytes(client.raw) == b"id: 1\ndata: only\n\n"
    assert wait_until(lambda: calls == ["closed"])
    assert wait_until(lambda: not server.streams)


def test_client_disconnect_fires_on_closed_without_any_push(sse_server):
    server, opened = sse_server(keep_alive=None, setup=subscribe_from_query)
    baseline = None
    with SSEClient(server, "/sse?topic=news&topic=other"):
        stream = opened.get(timeout=5)
        ended = threading.Event()
        stream.on_closed(ended.set)
        assert wait_until(lambda: stream in server.streams)
        assert stream.topics == {"news", "other"}
        baseline = len(live_greenlets(server))
        assert baseline >= 2  # the connection and its socket watcher
        started = time.monotonic()
    # the client went away; nothing is ever pushed
    assert ended.wait(5), "on_closed did not fire after the client disconnected"
    assert time.monotonic() - started < 5
    assert stream.closed
    assert wait_until(lambda: not server.streams)
    assert server.registry.counts() == {"peers": 0, "topics": 0, "subscribers": 0}
    assert server.registry.subscribers("news") == []
    assert wait_until(lambda: not live_greenlets(server)), live_greenlets(server)


def test_abrupt_client_reset_fires_on_closed(sse_server):
    server, opened = sse_server(keep_alive=None)
    sock = raw_stream(server, "/sse", version="HTTP/1.1")
    read_head(sock)
    stream = opened.get(timeout=5)
    ended = threading.Event()
    stream.on_closed(ended.set)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST instead of FIN
    assert ended.wait(5)
    assert wait_until(lambda: not server.streams)


def test_500_connect_disconnect_cycles_leave_nothing_behind(sse_server):
    closed = []
    lock = threading.Lock()

    def setup(stream, request):
        stream.subscribe("news")
        stream.subscribe(f"own-{id(stream)}")

        def on_closed():
            with lock:
                closed.append(1)

        stream.on_closed(on_closed)

    server, opened = sse_server(keep_alive=None, setup=setup, retry=1000)
    assert wait_until(lambda: server.runtime.bridge is not None)
    gc.collect()
    before = len(live_greenlets(server))
    for n in range(500):
        sock = raw_stream(server, "/sse", version="HTTP/1.1")
        try:
            head, rest = read_head(sock)
            assert head.startswith(b"HTTP/1.1 200")
            if n % 50 == 0:
                server.publish("news", f"cycle {n}")
                while b"cycle" not in rest:
                    rest += sock.recv(65536)
            if n % 2:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            sock.close()
    assert wait_until(lambda: len(closed) == 500, timeout=15), len(closed)
    assert wait_until(lambda: not server.streams, timeout=10), len(server.streams)
    assert server.registry.counts() == {"peers": 0, "topics": 0, "subscribers": 0}
    assert wait_until(lambda: len(live_greenlets(server)) <= before, timeout=10), live_greenlets(server)
    assert opened.qsize() == 500
    # and the server still works
    with SSEClient(server) as client:
        server.publish("news", "still alive")
        assert client.next_event().data == "still alive"


def test_stopping_the_server_ends_every_open_stream(sse_server):
    server, opened = sse_server(keep_alive=None, setup=subscribe_from_query)
    clients = [SSEClient(server, "/sse?topic=news") for _ in range(3)]
    try:
        streams = [opened.get(timeout=5) for _ in clients]
        ended = [threading.Event() for _ in streams]
        for stream, event in zip(streams, ended, strict=False):
            stream.on_closed(event.set)
        assert wait_until(lambda: len(server.streams) == 3)
        server.publish("news", "before stop")
        for client in clients:
            assert client.next_event().data == "before stop"
        server.stop(timeout=5)
        for client in clients:
            client.wait_eof()
        assert all(event.wait(5) for event in ended)
        assert all(stream.closed for stream in streams)
        assert not server.streams
        streams[0].push("after stop")  # ignored, no error
        streams[0].close()
    finally:
        for client in clients:
            client.close()


# -- pub/sub ---------------------------------------------------------------------------------


def test_a_publish_reaches_20_concurrent_streams(sse_server):
    server, _opened = sse_server(keep_alive=None, setup=subscribe_from_query)
    clients = [SSEClient(server, "/sse?topic=news") for _ in range(20)]
    try:
        assert wait_until(lambda: len(server.streams) == 20)
        assert len(server.registry.subscribers("news")) == 20
        server.publish("news", {"n": 1, "text": "é"})
        for client in clients:
            assert client.next_event() == SSEEvent("message", '{"n":1,"text":"é"}', "")
        syncws.publish("news", "via syncws.publish")
        for client in clients:
            assert client.next_event().data == "via syncws.publish"
        for client in clients:
            assert bytes(client.raw) == 'data: {"n":1,"text":"é"}\n\ndata: via syncws.publish\n\n'.encode()
    finally:
        for client in clients:
            client.close()
    assert wait_until(lambda: not server.streams)
    assert server.registry.counts() == {"peers": 0, "topics": 0, "subscribers": 0}


def news_stream_and_publishing_peer(start_server, on_message: Callable, **options):
    """A server whose /sse streams (``options``, no keep-alive) subscribe to "news", and whose /_ws
    peers run ``on_message`` and answer "ok"; returns ``(server, opened_streams)``.
    """
    app, opened = stream_app(keep_alive=None, setup=lambda stream, request: stream.subscribe("news"), **options)

    def message(peer, msg):
        on_message(peer, msg.text())
        peer.send("ok")

    app.get("/_ws", define_websocket_handler(message=message))
    return start_server(app), opened


def send_command(ws, command: str) -> None:
    """Send ``command`` to a peer of :func:`news_stream_and_publishing_peer`; return once it has run."""
    ws.send(command)
    assert ws.recv() == "ok"


def in_a_thread(publish: Callable, *args) -> None:
    thread = threading.Thread(target=publish, args=args)
    thread.start()
    thread.join(5)


def test_publish_from_every_source(start_server):
    def on_message(peer, command):
        if command.startswith("peer:"):
            peer.publish("news", command[5:])
        elif command.startswith("hub:"):
            peer.server.publish("news", command[4:])  # server.publish from a greenlet in the hub

    server, opened = news_stream_and_publishing_peer(start_server, on_message, namespace="/_ws")
    with SSEClient(server) as client:
        stream = opened.get(timeout=5)
        assert stream.namespace == "/_ws"
        with closing(connect(server, "/_ws")) as ws:
            send_command(ws, "peer:from a peer")
            assert client.next_event().data == "from a peer"
            send_command(ws, "hub:from the hub")
            assert client.next_event().data == "from the hub"

        server.publish("news", "from server.publish")
        assert client.next_event().data == "from server.publish"
        server.publish("news", "namespaced", namespace="/_ws")
        assert client.next_event().data == "namespaced"
        syncws.publish("news", "from syncws.publish")
        assert client.next_event().data == "from syncws.publish"

        in_a_thread(server.publish, "news", "from a thread")
        assert client.next_event().data == "from a thread"
        in_a_thread(syncws.publish, "news", "syncws.publish from a thread")
        assert client.next_event().data == "syncws.publish from a thread"


def test_peer_publish_is_namespace_scoped(start_server):
    server, opened = news_stream_and_publishing_peer(start_server, lambda peer, text: peer.publish("news", text))
    with SSEClient(server) as client:
        stream = opened.get(timeout=5)
        assert stream.namespace == "/sse"
        with closing(connect(server, "/_ws")) as ws:
            send_command(ws, "not for /sse")
        server.publish("news", "marker", namespace="/sse")
        assert client.next_event().data == "marker"
        assert bytes(client.raw) == b"data: marker\n\n"


def test_publish_payload_types(sse_server):
    server, opened = sse_server(keep_alive=None, setup=subscribe_from_query)
    with SSEClient(server, "/sse?topic=t") as client:
        opened.get(timeout=5)
        payloads = [
            ("multi\nline\r\ntext", "multi\nline\ntext"),
            ({"a": 1, "b": [True, None]}, '{"a":1,"b":[true,null]}'),
            ([1, "x"], '[1,"x"]'),
            (5, "5"),
            (1.5, "1.5"),
            (True, "true"),
            (None, ""),
            (b"\x00\x01\xfe\xff binary", base64.b64encode(b"\x00\x01\xfe\xff binary").decode()),
            (bytearray(b"ba"), base64.b64encode(b"ba").decode()),
        ]
        for payload, _ in payloads:
            server.publish("t", payload)
        assert [e.data for e in client.next_events(len(payloads))] == [data for _, data in payloads]
        assert all(e.type == "message" for e in client.events)


def test_namespace_defaults_to_the_path_and_can_be_overridden(start_server):
    app = App()
    opened: queue.Queue = queue.Queue()

    @app.get("/feeds/<name>")
    def feed(request, name):
        options = {"namespace": request.args["ns"]} if "ns" in request.args else {}
        stream = create_event_stream(request, keep_alive=None, **options)
        stream.subscribe("t")
        opened.put(stream)
        return stream

    server = start_server(app)
    with (
        SSEClient(server, "/feeds/a?x=1") as a,
        SSEClient(server, "/feeds/b") as b,
        SSEClient(server, "/feeds/c?ns=room") as c,
    ):
        streams = [opened.get(timeout=5) for _ in range(3)]
        assert sorted(s.namespace for s in streams) == ["/feeds/a", "/feeds/b", "room"]
        server.publish("t", "only a", namespace="/feeds/a")
        server.publish("t", "only room", namespace="room")
        server.publish("t", "everyone")  # no namespace: all of them
        assert [e.data for e in a.next_events(2)] == ["only a", "everyone"]
        assert [e.data for e in b.next_events(1)] == ["everyone"]
        assert [e.data for e in c.next_events(2)] == ["only room", "everyone"]


def test_unsubscribe_stops_delivery(sse_stream):
    with sse_stream() as (server, client, stream):
        stream.subscribe("a")
        stream.subscribe("b")
        assert stream.topics == {"a", "b"}
        server.publish("a", "a1")
        assert client.next_event().data == "a1"
        stream.unsubscribe("a")
        stream.unsubscribe("never-subscribed")  # harmless
        assert stream.topics == {"b"}
        server.publish("a", "a2 must not arrive")
        server.publish("b", "b1")
        assert client.next_event().data == "b1"
        assert [e.data for e in client.events] == ["a1", "b1"]
        stream.close()
        client.wait_eof()
    assert wait_until(lambda: server.registry.counts() == {"peers": 0, "topics": 0, "subscribers": 0})


def test_subscribe_after_close_registers_nothing(sse_stream):
    with sse_stream() as (server, client, stream):
        stream.close()
        client.wait_eof()
        stream.subscribe("late")
    assert wait_until(lambda: not server.streams)
    assert server.registry.counts() == {"peers": 0, "topics": 0, "subscribers": 0}


# -- the example --------------------------------------------------------------------------------


@pytest.mark.slow  # the example app, end to end
def test_example_streams(start_server):
    from examples import sse as example

    server = start_server(example.app)
    page = requests.get(server.url + "/", timeout=5)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert 'new EventSource("/sse")' in page.text
    assert 'new EventSource("/events")' in page.text
    assert 'addEventListener("update"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # self-contained

    with SSEClient(server, "/sse") as clock:
        event = clock.next_event(timeout=5)
        assert re.fullmatch(r"Message @ \d\d:\d\d:\d\d", event.data), event
        assert event.type == "message"

    with SSEClient(server, "/events") as updates:
        first, second = updates.next_events(2, timeout=5)
        for n, event in enumerate((first, second)):
            assert event.type == "update"
            assert event.last_event_id == str(n)
            assert 0 <= json.loads(event.data)["value"] < 1
        assert updates.parser.retry == 3000
        assert bytes(updates.raw).startswith(b'id: 0\nevent: update\nretry: 3000\ndata: {"value":')

    with SSEClient(server, "/events", headers={"Last-Event-ID": "41"}) as updates:
        assert updates.next_event(timeout=5).last_event_id == "42"
    assert wait_until(lambda: not server.streams)


def test_stop_closes_idle_keep_alive_connections(start_server):
    """After a restart a browser sends its EventSource reconnect on a kept-alive
    connection if it still looks open: stop() must close those, not abandon them."""
    app = App()
    app.get("/", lambda request: "page")
    server = start_server(app)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head, body = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200")
        while len(body) < len(b"page"):
            body += sock.recv(65536)
        assert body == b"page"
        server.stop(timeout=5)
        assert read_until_closed(sock) == b""  # closed by the server, not left hanging


# -- data types, abandoned streams, clients that stop reading ------------------------


def test_non_string_data_follows_the_payload_rules(sse_stream):
    with sse_stream() as (_server, client, stream):
        stream.push({"data": {"a": 1, "b": ["é"]}})
        stream.push(EventStreamMessage(data=None, event="empty"))
        stream.push({"data": True})
        stream.push({"data": b"\x00\xff"})
        stream.push({"data": 1.5})
        events = client.next_events(5)
        assert [(e.type, e.data) for e in events] == [
            ("message", '{"a":1,"b":["é"]}'),
            ("empty", ""),  # one empty data line: EventSource dispatches "" data
            ("message", "true"),
            ("message", base64.b64encode(b"\x00\xff").decode()),
            ("message", "1.5"),
        ]
        assert b"event: empty\ndata: \n\n" in client.raw


def test_a_view_that_raises_after_subscribing_leaves_nothing_registered(start_server):
    app = App()
    ended = threading.Event()
    made: queue.Queue[EventStream] = queue.Queue()

    @app.get("/sse")
    def view(request):
        stream = create_event_stream(request)
        stream.subscribe("news")
        stream.on_closed(ended.set)
        made.put(stream)
        raise RuntimeError("the view fails after subscribing")

    server = start_server(app)
    reply = requests.get(server.url + "/sse", timeout=5)
    assert reply.status_code == 500
    stream = made.get(timeout=5)
    assert ended.wait(5), "on_closed must run for a stream that was never served"
    assert stream.closed
    assert wait_until(lambda: server.registry.counts() == {"peers": 0, "topics": 0, "subscribers": 0})
    assert not server.streams
    # and the server still streams to the next client
    with SSEClient(server, "/sse") as client:
        assert client.status == 500  # same view, same failure, nothing left behind again
    # the cleanup runs right after the response is written: bound the wait
    assert wait_until(lambda: server.registry.counts() == {"peers": 0, "topics": 0, "subscribers": 0})


def test_a_client_that_stops_reading_is_ended_not_buffered_without_bound(start_server, caplog):
    limit = 64 * 1024
    app, opened = stream_app(keep_alive=None)
    server = start_server(app, max_buffer_size=limit)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    stream = opened.get(timeout=5)
    ended = threading.Event()
    stream.on_closed(ended.set)
    # a healthy client on the same server keeps receiving throughout
    with SSEClient(server, "/sse") as healthy:
        other = opened.get(timeout=5)
        event = "x" * 4000
        pushed = 0
        while not ended.is_set() and pushed < 5000:
            stream.push(event)
            pushed += 1
            if pushed % 50 == 0:
                other.push(f"tick {pushed}")
                assert healthy.next_event().data == f"tick {pushed}"
                time.sleep(0.001)
        assert ended.wait(5), f"the stalled stream was never ended after {pushed} pushes"
        (unsent,) = [int(m.group(1)) for r in caplog.records if (m := re.search(r"\((\d+) bytes unsent\)", r.message))]
        assert 0 < unsent <= limit  # never more than the limit was held for it
        other.push("after")
        assert healthy.next_event().data == "after"
    sock.close()
    assert wait_until(lambda: not server.streams)


# -- how the pushes reach the socket ------------------------------------------------


def read_chunks(sock: socket.socket, body: bytes, count: int) -> list[bytes]:
    """``count`` HTTP/1.1 chunks from ``body`` and then the socket, exactly as framed."""
    chunks: list[bytes] = []
    while len(chunks) < count:
        size_line, found, rest = body.partition(b"\r\n")
        if found:
            size = int(size_line, 16)
            if len(rest) >= size + 2:
                assert rest[size : size + 2] == b"\r\n", body
                chunks.append(rest[:size])
                body = rest[size + 2 :]
                continue
        data = sock.recv(65536)
        assert data, f"closed after {chunks}"
        body += data
    assert body == b"", body
    return chunks


def test_the_pushes_of_one_turn_of_the_hub_leave_as_one_chunk(sse_server):
    """Pushes are queued, and the hub writes what one turn queued at once: one chunk, one ``send``."""
    server, opened = sse_server(keep_alive=None)
    with raw_stream(server, "/sse", version="HTTP/1.1") as sock:
        head, body = read_head(sock)
        assert b"\r\ntransfer-encoding: chunked" in head.lower()
        stream = opened.get(timeout=5)

        def three_pushes() -> None:
            for i in range(3):
                stream.push(f"e{i}")

        server.call_in_hub(three_pushes)
        assert read_chunks(sock, body, 1) == [b"data: e0\n\ndata: e1\n\ndata: e2\n\n"]
        stream.push("alone")
        assert read_chunks(sock, b"", 1) == [b"data: alone\n\n"]
        stream.close()
        assert read_until_closed(sock) == b"0\r\n\r\n"


def test_a_producer_that_yields_after_each_push_still_shares_writes(sse_server):
    """push, ``sleep(0)``, push: the streams' flusher waits one round of the hub, so both go in one chunk."""
    server, opened = sse_server(keep_alive=None)
    with raw_stream(server, "/sse", version="HTTP/1.1") as sock:
        _head, body = read_head(sock)
        stream = opened.get(timeout=5)

        def producer() -> None:
            stream.push("first")
            gevent.sleep(0)
            stream.push("second")

        server.call_in_hub(gevent.spawn, producer)
        assert read_chunks(sock, body, 1) == [b"data: first\n\ndata: second\n\n"]


class DeclaresItsBody:
    """A middleware that sets a header of the body's own (an encoding), and sees every chunk."""

    def __init__(self, app) -> None:
        self.app = app
        self.chunks: list[bytes] = []

    def __call__(self, environ, start_response):
        def declare(status, headers, exc_info=None):
            return start_response(status, [*headers, ("Content-Encoding", "identity")], exc_info)

        for chunk in self.app(environ, declare):
            self.chunks.append(chunk)
            yield chunk


def test_a_middleware_that_declares_the_body_gets_every_event_through_it(start_server):
    """Then the stream cannot write to the socket itself: its events go through the WSGI body."""
    app, opened = stream_app(keep_alive=None)
    middleware = DeclaresItsBody(app)
    server = start_server(middleware, threads="off")
    with SSEClient(server) as client:
        assert client.header("Content-Encoding") == "identity"
        stream = opened.get(timeout=5)
        for i in range(3):
            stream.push(f"e{i}")
        assert [client.next_event().data for _ in range(3)] == ["e0", "e1", "e2"]
        stream.close()
        client.wait_eof()
    assert b"".join(middleware.chunks) == b"data: e0\n\ndata: e1\n\ndata: e2\n\n"


def test_a_busy_stream_gets_no_keep_alive_comments(sse_server):
    """A keep-alive comment is for an idle stream: pushes more often than ``keep_alive`` leave none."""
    server, opened = sse_server(keep_alive=0.2)
    with SSEClient(server) as client:
        stream = opened.get(timeout=5)
        for i in range(25):  # 0.5 s of pushes, every 20 ms
            stream.push(f"tick {i}")
            time.sleep(0.02)
        stream.push("last")
        client.read_until(lambda: any(event.data == "last" for event in client.events), timeout=5, what="last")
        assert client.parser.comments == []
        client.read_until(lambda: client.parser.comments == ["keep-alive"], timeout=5, what="a keep-alive once idle")
