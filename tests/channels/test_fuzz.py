"""Random JSON shapes thrown at a live channels endpoint (Hypothesis), beside a healthy client.

Properties: every request that carries an id (but ``pong``, which has no
answer) gets exactly one answer with
that id (a result or an error reply); nothing closes the connection once it
is connected; nothing is logged at ERROR; and a well-behaved client on the
same server keeps getting answers.  Deterministic (``derandomize=True``) and bounded.
"""

from __future__ import annotations

import json
import logging

import pytest
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncws import Channels
from syncws.protocol.channels import SUBPROTOCOL, Request

pytestmark = pytest.mark.slow  # fuzzing: not in the fast loop

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ("topic", "since", "data", "method", "params", "token", "limit", "by_user", "presence_events", "exclude_self")
REQUESTS = st.fixed_dictionaries(
    {
        "type": st.sampled_from([*(str(r) for r in Request if r not in (Request.CONNECT, Request.PONG)), "launch"])
        | JSON
    },
    optional={name: JSON | st.text(max_size=300) for name in FIELDS},
)


@pytest.fixture(scope="module")
def fuzzed(request):
    from syncws import App, serve

    channels = Channels(authorize=lambda peer, action, topic: True)
    channels.rpc("echo")(lambda peer, params: params)
    app = App()
    app.get("/_syncws", channels)
    server = serve(app, host="127.0.0.1", port=0, background=True, access_log=False, history_size=10)
    url = server.url.replace("http://", "ws://") + "/_syncws"
    sockets = [websocket.create_connection(url, subprotocols=[SUBPROTOCOL], timeout=5) for _ in range(2)]
    for ws in sockets:
        ws.send(json.dumps({"type": "connect", "id": "c"}))
        assert "result" in json.loads(ws.recv())
    yield sockets
    for ws in sockets:
        ws.close()
    server.stop(timeout=2)


def answer_to(ws: websocket.WebSocket, request_id: object) -> dict:
    while True:
        message = json.loads(ws.recv())
        if message.get("id") == request_id:
            return message


@settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=REQUESTS, request_id=st.integers(0, 10**6) | st.text(min_size=1, max_size=10))
def test_any_json_shape_gets_one_answer_and_the_server_stays_healthy(fuzzed, caplog, body, request_id):
    fuzzy, healthy = fuzzed
    caplog.set_level(logging.ERROR)
    fuzzy.send(json.dumps({**body, "id": request_id}))
    answer = answer_to(fuzzy, request_id)
    assert ("result" in answer) != ("error" in answer), answer
    if "error" in answer:
        assert set(answer["error"]) == {"code", "message"}
    healthy.send(json.dumps({"type": "rpc", "id": "h", "method": "echo", "params": [1]}))
    assert answer_to(healthy, "h") == {"id": "h", "result": [1]}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_non_json_and_oversized_frames(fuzzed):
    fuzzy, healthy = fuzzed
    for text in ("", "{", "[]", "null", '"connect"', "{" * 10_000 + "}" * 10_000):
        fuzzy.send(text)
        assert answer_to(fuzzy, None)["error"]["code"] == "bad_request"
    healthy.send(json.dumps({"type": "rpc", "id": "h", "method": "echo", "params": 2}))
    assert answer_to(healthy, "h")["result"] == 2
