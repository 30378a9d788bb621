"""JSON log lines: the formatter, and ``--log-format json`` on a real server process."""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import time

import pytest
import requests
import websocket

from syncws import App, create_event_stream, define_websocket_handler, serve
from syncws.base.logs import FIELDS, JsonFormatter

from ..conftest import wait_until
from ..support import SyncwsRunner, recv_close


def record(message: str, *args, exc_info=None, **extra) -> logging.LogRecord:
    made = logging.getLogger("syncws.access").makeRecord(
        "syncws.access", logging.INFO, __file__, 1, message, args, exc_info
    )
    made.__dict__.update(extra)
    return made


def test_a_line_is_one_json_object_with_the_fields_that_apply():
    line = JsonFormatter().format(
        record("closed %s", "é", connection="c1", user="ann", code=1000, reason="", path=None)
    )
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "closed é" and entry["level"] == "info" and entry["logger"] == "syncws.access"
    assert entry["time"].endswith("Z") and len(entry["time"]) == len("2026-12-07T06:46:08.035Z")
    assert (entry["connection"], entry["user"], entry["code"], entry["reason"]) == ("c1", "ann", 1000, "")
    assert "path" not in entry  # a field that does not apply is left out, not null
    assert list(entry)[4:] == [name for name in FIELDS if name in entry]  # in the documented order


def test_an_exception_is_in_the_line():
    try:
        raise ValueError("broken hook")
    except ValueError:
        line = JsonFormatter().format(record("hook failed", exc_info=sys.exc_info()))
    entry = json.loads(line)
    assert "ValueError: broken hook" in entry["exception"] and entry["message"] == "hook failed"


def test_a_value_json_cannot_encode_is_written_as_text():
    entry = json.loads(JsonFormatter().format(record("x", user=object())))
    assert entry["user"].startswith("<object object")


def test_serve_with_logging_already_configured_says_how_to_get_json(caplog):
    app = App()
    caplog.set_level(logging.INFO, logger="syncws")
    server = serve(app, port=0, background=True, log_format="json")  # pytest's handlers are configured
    try:
        assert any("set syncws.JsonFormatter()" in r.getMessage() for r in caplog.records)
    finally:
        server.stop(timeout=1)


def test_log_format_must_be_text_or_json():
    from syncws import ConfigurationError, Server

    with pytest.raises(ConfigurationError, match="log_format"):
        Server(App(), port=0, log_format="xml")


APP = """
    from syncws import App, define_websocket_handler

    def on_open(peer):
        peer.identify("ann")

    app = App()
    app.get("/_ws", define_websocket_handler(open=on_open, message=lambda peer, m: peer.close(4010, "done")))
    app.get("/", lambda request: "home")
"""


@pytest.mark.slow
def test_the_cli_writes_one_json_object_per_line_with_the_connection_fields(tmp_path):
    with SyncwsRunner(tmp_path) as run:
        process = run("logapp:app", "--port", "0", "--log-format", "json", files={"logapp.py": APP})
        url = process.wait_for_url()
        assert requests.get(url + "/", headers={"User-Agent": "t"}, timeout=5).text == "home"
        client = websocket.create_connection(url.replace("http", "ws") + "/_ws", timeout=5)
        client.send("bye")
        assert recv_close(client) == (4010, "done")
        client.close()
        process.proc.send_signal(signal.SIGINT)
        assert process.finish() == 0
    entries = [json.loads(line) for line in process.err.splitlines()]  # every line parses
    request = next(e for e in entries if e.get("path") == "/" and e.get("status") == 200)
    assert request["method"] == "GET" and request["remote"] == "127.0.0.1" and request["duration"] >= 0
    upgrade = next(e for e in entries if e.get("status") == 101)
    assert upgrade["path"] == "/_ws"
    closed = next(e for e in entries if e.get("kind") == "websocket")
    assert closed["user"] == "ann" and closed["path"] == "/_ws" and closed["remote"] == "127.0.0.1"
    assert (closed["code"], closed["reason"]) == (4010, "done") and closed["duration"] >= 0
    assert closed["connection"] and closed["logger"] == "syncws.access" and closed["level"] == "info"
    assert any("shutting down" in e["message"] for e in entries)


def test_an_event_stream_s_end_is_logged_with_its_fields(start_server, caplog):
    caplog.set_level(logging.INFO, logger="syncws.access")
    app = App()

    @app.get("/events")
    def events(request):
        stream = create_event_stream(request, keep_alive=None)
        stream.push("one")
        stream.close()
        return stream

    server = start_server(app, access_log=True)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received = b""
        while data := sock.recv(65536):  # the stream ends the connection
            received += data
    assert received.endswith(b"\r\n\r\nb\r\ndata: one\n\n\r\n0\r\n\r\n")
    assert wait_until(lambda: any(getattr(r, "kind", None) == "sse" for r in caplog.records))
    ended = [r for r in caplog.records if getattr(r, "kind", None) == "sse"]
    assert len(ended) == 1 and ended[0].path == "/events" and ended[0].connection.startswith("sse-")
    assert ended[0].remote == "127.0.0.1" and ended[0].duration >= 0
    assert not hasattr(ended[0], "code")  # a stream has no close code
    # The request's line counts every byte sent, the events that the hub wrote included.
    assert wait_until(lambda: any(getattr(r, "method", None) == "GET" for r in caplog.records))
    (line,) = [r for r in caplog.records if getattr(r, "method", None) == "GET"]
    assert line.bytes == len(received)


def test_no_line_when_the_access_log_is_off(start_server, caplog):
    caplog.set_level(logging.INFO, logger="syncws.access")
    app = App()
    app.get("/_ws", define_websocket_handler())
    server = start_server(app, access_log=False)
    client = websocket.create_connection(server.url.replace("http", "ws") + "/_ws", timeout=5)
    client.close()
    time.sleep(0.2)
    assert [r for r in caplog.records if r.name == "syncws.access"] == []
