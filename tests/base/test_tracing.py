"""OpenTelemetry spans, recorded by the SDK's in-memory exporter; and nothing at all without the extra."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import requests
import websocket
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from werkzeug.wrappers import Response

from syncws import App, Channels, RPCError, define_websocket_handler
from syncws.base.tracing import make_tracer

from ..conftest import connect, wait_until
from ..support import RedisServer
from ..support.processes import subprocess_env

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class _Switch(Sampler):
    """Records only while a test of this module runs: the provider is global for the whole process."""

    on = False

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
        return SamplingResult(Decision.RECORD_AND_SAMPLE if self.on else Decision.DROP, attributes)

    def get_description(self) -> str:
        return "on while a tracing test runs"


_EXPORTER = InMemorySpanExporter()
_SWITCH = _Switch()


@pytest.fixture
def spans():
    """The spans finished during the test (the SDK's in-memory exporter), by name."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider(sampler=_SWITCH)
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    _SWITCH.on = True

    def named(name: str, count: int = 1) -> list:
        assert wait_until(lambda: len([s for s in _EXPORTER.get_finished_spans() if s.name == name]) >= count)
        return [s for s in _EXPORTER.get_finished_spans() if s.name == name]

    yield named
    _SWITCH.on = False


def test_the_upgrade_span_is_a_child_of_the_request_traceparent_and_covers_the_hook(start_server, spans):
    tracer = trace.get_tracer("the app")

    def upgrade(request):
        with tracer.start_as_current_span("load the user"):
            return None

    app = App()
    app.get("/_ws", define_websocket_handler(upgrade=upgrade))
    server = start_server(app, tracing="on")
    client = connect(server, header=[f"traceparent: {TRACEPARENT}"])
    (upgrade_span,) = spans("syncws.upgrade")
    assert format(upgrade_span.context.trace_id, "032x") == TRACE_ID
    assert format(upgrade_span.parent.span_id, "016x") == PARENT_ID and upgrade_span.parent.is_remote
    assert upgrade_span.kind is trace.SpanKind.SERVER
    assert upgrade_span.attributes["url.path"] == "/_ws"
    assert upgrade_span.attributes["http.response.status_code"] == 101
    assert upgrade_span.attributes["syncws.namespace"] == "/_ws"
    assert upgrade_span.attributes["client.address"] == "127.0.0.1"
    (hook_span,) = spans("load the user")
    assert hook_span.parent.span_id == upgrade_span.context.span_id  # the user's hook is inside it
    client.close()


def test_a_refused_upgrade_records_its_status_and_a_new_trace_without_traceparent(start_server, spans):
    app = App()
    app.get("/_ws", define_websocket_handler(upgrade=lambda request: Response("no", status=403)))
    server = start_server(app, tracing="on")
    with pytest.raises(websocket.WebSocketBadStatusException):
        connect(server)
    (span,) = spans("syncws.upgrade")
    assert span.attributes["http.response.status_code"] == 403
    assert span.parent is None


def test_rpc_spans_are_children_of_their_connection_s_upgrade(start_server, spans):
    channels = Channels(connect=lambda request, token: {"user": token})

    @channels.rpc("add")
    def add(peer, params):
        return params["a"] + params["b"]

    @channels.rpc("fail")
    def fail(peer, params):
        raise RPCError("nope", "refused on purpose")

    app = App()
    app.get("/_syncws", channels)
    server = start_server(app, tracing="on")
    client = connect(server, "/_syncws", subprotocols=["syncws.v1"], header=[f"traceparent: {TRACEPARENT}"])
    client.send(json.dumps({"type": "connect", "id": 0, "token": "ann"}))
    json.loads(client.recv())
    client.send(json.dumps({"type": "rpc", "id": 1, "method": "add", "params": {"a": 1, "b": 2}}))
    assert json.loads(client.recv())["result"] == 3
    client.send(json.dumps({"type": "rpc", "id": 2, "method": "fail"}))
    assert json.loads(client.recv())["error"]["code"] == "nope"
    (upgrade_span,) = spans("syncws.upgrade")
    ok, failed = sorted(spans("syncws.rpc", 2), key=lambda s: s.start_time)
    for span in (ok, failed):
        assert span.parent.span_id == upgrade_span.context.span_id
        assert format(span.context.trace_id, "032x") == TRACE_ID
    assert ok.attributes["rpc.method"] == "add" and "syncws.error" not in ok.attributes
    assert failed.attributes["rpc.method"] == "fail" and failed.attributes["syncws.error"] == "nope"
    client.close()


def test_a_publish_span_counts_its_deliveries_under_the_caller_s_span(start_server, spans):
    app = App()
    app.get("/_ws", define_websocket_handler(open=lambda peer: peer.subscribe("news")))
    server = start_server(app, tracing="on")
    clients = [connect(server) for _ in range(3)]
    assert wait_until(lambda: len(server.registry.recipients("news", "/_ws")) == 3)
    with trace.get_tracer("the app").start_as_current_span("nightly job") as job:
        server.publish("news", {"n": 1})
    assert [client.recv() for client in clients] == ['{"n":1}'] * 3
    (span,) = spans("syncws.publish")
    assert span.parent.span_id == job.get_span_context().span_id
    assert span.kind is trace.SpanKind.PRODUCER
    assert span.attributes["messaging.destination.name"] == "news"
    assert span.attributes["syncws.deliveries"] == 3 and span.attributes["syncws.stored"] is False


def test_a_recovery_span_says_what_was_replayed(start_server, spans):
    recoveries = []

    def on_open(peer):
        recoveries.append(peer.subscribe("room", since=peer.request.args.get("since")))

    app = App()
    app.get("/_ws", define_websocket_handler(open=on_open))
    server = start_server(app, tracing="on", history_size=10)
    first = connect(server)
    assert wait_until(lambda: recoveries)
    for n in range(3):
        server.publish("room", n)
    assert [first.recv() for _ in range(3)] == ["0", "1", "2"]
    offset = server.history("room", "/_ws")[0].offset
    again = connect(server, f"/_ws?since={offset}")
    assert [again.recv() for _ in range(2)] == ["1", "2"]
    (span,) = spans("syncws.recovery")  # the first subscribe had no offset: no recovery span
    assert span.attributes["syncws.replayed"] == 2 and span.attributes["syncws.recovered"] is True
    assert span.attributes["syncws.since"] == offset


@pytest.mark.slow
def test_broker_reads_and_deliveries_from_redis_have_spans(start_server, spans, tmp_path):
    with RedisServer(tmp_path) as redis_server:
        app = App()
        app.get("/_ws", define_websocket_handler(open=lambda peer: peer.subscribe("feed")))
        server = start_server(app, tracing="on", broker=redis_server.url, history_size=10)
        client = connect(server)
        assert wait_until(lambda: server.presence_count("feed") == 1)
        server.publish("feed", "hello")
        assert client.recv() == "hello"
        assert [entry.data for entry in server.history("feed", "/_ws")] == ["hello"]
        (publish,) = spans("syncws.publish")
        assert publish.attributes["syncws.stored"] is True
        (deliver,) = spans("syncws.deliver")  # back from Redis, with its offset
        assert deliver.attributes["syncws.deliveries"] == 1 and deliver.kind is trace.SpanKind.CONSUMER
        (read,) = spans("syncws.broker.history")
        assert read.attributes["db.system"] == "redis" and read.kind is trace.SpanKind.CLIENT
        assert spans("syncws.broker.presence")
        client.close()


def test_tracing_off_makes_no_tracer():
    assert make_tracer("off") is None
    assert make_tracer("auto") is not None  # the test extras install the API


ABSENT = """
    import sys
    sys.modules["opentelemetry"] = None  # as if syncws[otel] were not installed
    {setup}
    import requests, websocket
    from syncws import App, ConfigurationError, DependencyMissing, Server, define_websocket_handler, serve

    app = App()
    app.get("/_ws", define_websocket_handler(open=lambda peer: peer.subscribe("t"),
                                            message=lambda peer, message: peer.send(message.text())))
    server = serve(app, port=0, background=True, access_log=False, history_size=5, tracing="{mode}")
    client = websocket.create_connection(server.url.replace("http", "ws") + "/_ws", timeout=5)
    client.send("echo")
    assert client.recv() == "echo"
    server.publish("t", "fan-out")
    assert client.recv() == "fan-out"
    assert server.runtime.tracer is None
    client.close()
    server.stop(timeout=1)
    print("imported:", sorted(name for name, module in sys.modules.items()
                             if name.startswith("opentelemetry") and module is not None))
    try:
        Server(app, port=0, tracing="on")
    except DependencyMissing as exc:
        print("on:", exc)
"""


@pytest.mark.parametrize(
    "setup, mode",
    [("", "auto"), ("del sys.modules['opentelemetry']", "off")],
    ids=["absent", "installed but off"],
)
def test_without_the_extra_or_with_tracing_off_nothing_is_imported(setup, mode):
    script = textwrap.dedent(ABSENT).replace("{setup}", setup).replace("{mode}", mode)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=subprocess_env()
    )
    assert done.returncode == 0, done.stderr
    assert "imported: []" in done.stdout
    if mode == "auto":
        assert "on: tracing='on' needs the OpenTelemetry API: pip install 'syncws[otel]'" in done.stdout


def test_the_health_check_is_not_traced(start_server, spans):
    app = App()
    server = start_server(app, tracing="on", health_path="/health")
    assert requests.get(server.url + "/health/ready", timeout=5).status_code == 200
    assert [s.name for s in _EXPORTER.get_finished_spans()] == []


NO_SDK = """
    import time
    import websocket
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    import syncws.base.tracing
    from syncws import App, define_websocket_handler, serve

    syncws.base.tracing.PROVIDER_CHECK_INTERVAL = 0.2
    app = App()
    app.get("/_ws", define_websocket_handler(open=lambda peer: peer.subscribe("t")))
    server = serve(app, port=0, background=True, access_log=False)
    url = server.url.replace("http", "ws") + "/_ws"
    first = websocket.create_connection(url, timeout=5)
    assert server.runtime.tracer is not None and not server.runtime.tracer.configured()
    for _ in range(500):  # the session joins the server's set just after the 101 went out
        if server.sessions:
            break
        time.sleep(0.01)
    (session,) = server.sessions
    assert "trace_context" not in vars(session)  # nothing stored per connection without an SDK
    assert trace.get_current_span() is trace.INVALID_SPAN
    # The app configures its SDK after the server started: spans begin within the check interval.
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    time.sleep(0.3)
    second = websocket.create_connection(url, timeout=5)
    for _ in range(500):  # its open hook subscribed it
        if server.presence_count("t") == 2:
            break
        time.sleep(0.01)
    server.publish("t", "x")
    assert first.recv() == second.recv() == "x"
    for _ in range(500):  # both spans end in the server's threads, just after the client saw their effect
        names = sorted({span.name for span in exporter.get_finished_spans()})
        if len(names) == 2:
            break
        time.sleep(0.01)
    print(names)
    server.stop(timeout=1)
"""


def test_without_an_sdk_nothing_is_recorded_or_stored_until_the_app_configures_one():
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(NO_SDK)],
        capture_output=True,
        text=True,
        timeout=60,
        env=subprocess_env(),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['syncws.publish', 'syncws.upgrade']"
