"""What a view may return (web/responses.py), over real HTTP: str, bytes, JSON, None, tuples, a Response."""

from __future__ import annotations

import pytest
import requests
from werkzeug.wrappers import Response

from syncws import App


def get(server, path, **kwargs):
    kwargs.setdefault("timeout", 5)
    return requests.get(server.url + path, **kwargs)


@pytest.fixture
def types_server(start_server):
    app = App()
    app.get("/str", lambda request: "<h1>héllo</h1>")
    app.get("/bytes", lambda request: b"\x00\x01raw")
    app.get("/dict", lambda request: {"a": 1, "b": [1, 2], "c": "é", "d": None, "e": True})
    app.get("/list", lambda request: [1, "two", {"three": 3}])
    app.get("/response", lambda request: Response("teapot", status=418, mimetype="text/x-tea"))
    app.get("/tuple2", lambda request: ("made", 201))
    app.get("/tuple3", lambda request: ({"ok": True}, 202, {"X-Custom": "yes"}))
    app.get("/tuple3list", lambda request: ("listed", "203 Listed", [("X-A", "1"), ("X-B", "2")]))
    app.get("/none", lambda request: None)
    app.get("/bad", lambda request: object())
    return start_server(app)


def test_str_is_html_utf8(types_server):
    r = get(types_server, "/str")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert r.content == "<h1>héllo</h1>".encode()


def test_bytes_are_sent_as_is(types_server):
    r = get(types_server, "/bytes")
    assert r.status_code == 200
    assert r.content == b"\x00\x01raw"
    assert not r.headers["Content-Type"].startswith("text/html")


def test_dict_and_list_are_compact_json(types_server):
    r = get(types_server, "/dict")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.content == '{"a":1,"b":[1,2],"c":"é","d":null,"e":true}'.encode()
    r = get(types_server, "/list")
    assert r.headers["Content-Type"] == "application/json"
    assert r.content == b'[1,"two",{"three":3}]'


def test_response_is_returned_unchanged(types_server):
    r = get(types_server, "/response")
    assert r.status_code == 418
    assert r.text == "teapot"
    assert r.headers["Content-Type"].startswith("text/x-tea")


def test_tuples(types_server):
    r = get(types_server, "/tuple2")
    assert (r.status_code, r.text) == (201, "made")
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    r = get(types_server, "/tuple3")
    assert r.status_code == 202
    assert r.headers["X-Custom"] == "yes"
    assert r.headers["Content-Type"] == "application/json"
    assert r.content == b'{"ok":true}'
    r = get(types_server, "/tuple3list")
    assert r.status_code == 203
    assert r.reason == "Listed"
    assert (r.headers["X-A"], r.headers["X-B"]) == ("1", "2")


def test_none_is_204(types_server):
    r = get(types_server, "/none")
    assert r.status_code == 204
    assert r.content == b""


def test_unsupported_return_type_is_500_and_server_keeps_serving(types_server):
    assert get(types_server, "/bad").status_code == 500
    assert get(types_server, "/str").status_code == 200


# -- errors --------------------------------------------------------------------------------
