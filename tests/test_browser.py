"""A real browser: headless Chromium opens the examples (sse, chat, feed) and drives them.

Playwright drives Debian's ``/usr/bin/chromium`` (``apt-get install chromium``;
Playwright never downloads a browser here).  The SSE test checks that events
arrive through ``EventSource`` (``onmessage`` and ``addEventListener``), then
restarts the server on the same port and checks that the browser reconnects
by itself, sending ``Last-Event-ID``, and that the update counter carries on
from it.  The chat test has two pages talk; the compression test checks that
Chromium negotiates permessage-deflate; the feed tests check that a page
loses no tick when its WebSocket drops (it resumes from its last offset) and
when the server restarts with its history in Redis (EventSource resumes from
``Last-Event-ID``, the WebSocket from its offset).
"""

from __future__ import annotations

import os
import re
import shutil
import threading

import pytest

from syncws import serve

from .conftest import wait_until
from .support import free_port

pytestmark = pytest.mark.slow  # subprocesses, browsers, Redis or load: not in the fast loop

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (test extra)")

CHROMIUM = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 15_000


class Recorder:
    """WSGI middleware: remembers the Last-Event-ID of every /events request."""

    def __init__(self, app) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.last_event_ids: list = []

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == "/events":
            with self.lock:
                self.last_event_ids.append(environ.get("HTTP_LAST_EVENT_ID"))
        return self.app(environ, start_response)


def number(page, selector: str) -> int:
    return int(page.text_content(selector))


@pytest.fixture
def browser():
    if not CHROMIUM:
        pytest.fail("Chromium is missing: apt-get install -y chromium (bash scripts/test does it)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def test_event_source_receives_both_streams_and_reconnects_after_a_restart(browser):
    from examples import sse as example

    port = free_port()
    servers = []

    def start() -> Recorder:
        recorder = Recorder(example.app)
        servers.append(serve(recorder, host="127.0.0.1", port=port, background=True, access_log=False))
        return recorder

    try:
        first = start()
        base = f"http://127.0.0.1:{port}"
        page = browser.new_page()
        requested: list = []
        page.on("request", lambda request: requested.append(request.url))
        errors: list = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(base + "/", timeout=WAIT_MS)

        # Both streams deliver: the clock through onmessage, updates through addEventListener
        page.wait_for_function(
            "() => Number(document.getElementById('clock-count').textContent) >= 2"
            " && Number(document.getElementById('update-count').textContent) >= 2",
            timeout=WAIT_MS,
            polling=100,
        )
        assert re.fullmatch(r"Message @ \d\d:\d\d:\d\d", page.text_content("#clock-latest"))
        assert page.text_content("#clock-state") == "open"
        assert page.text_content("#update-state") == "open"
        ids = [int(i) for i in page.eval_on_selector_all("#update-log li.update", "els => els.map(e => e.dataset.id)")]
        assert ids[::-1] == list(range(len(ids)))  # 0, 1, 2... (newest first in the log)
        values = page.eval_on_selector_all("#update-log li.update", "els => els.map(e => Number(e.dataset.value))")
        assert all(0 <= value < 1 for value in values)
        assert first.last_event_ids == [None]  # the first connection has no Last-Event-ID

        # Stop the server: both streams end, EventSource starts reconnecting
        servers[0].stop(timeout=5)
        page.wait_for_function(
            "() => document.getElementById('clock-state').textContent === 'reconnecting'"
            " && document.getElementById('update-state').textContent === 'reconnecting'",
            timeout=WAIT_MS,
            polling=100,
        )
        last_seen = number(page, "#update-last-id")
        clock_seen = number(page, "#clock-count")
        updates_seen = number(page, "#update-count")

        # A new server on the same port: the browser comes back by itself
        second = start()
        page.wait_for_function(
            f"() => Number(document.getElementById('update-count').textContent) > {updates_seen}"
            f" && Number(document.getElementById('clock-count').textContent) > {clock_seen}",
            timeout=WAIT_MS,
            polling=100,
        )
        assert page.text_content("#clock-state") == "open"
        assert page.text_content("#update-state") == "open"
        assert re.fullmatch(r"Message @ \d\d:\d\d:\d\d", page.text_content("#clock-latest"))

        # The reconnect carried Last-Event-ID, and the counter went on from it
        assert wait_until(lambda: second.last_event_ids, timeout=5)
        assert second.last_event_ids[0] == str(last_seen)
        ids = [int(i) for i in page.eval_on_selector_all("#update-log li.update", "els => els.map(e => e.dataset.id)")]
        after = [i for i in ids[::-1] if i > last_seen]
        assert after and after[0] == last_seen + 1, (last_seen, ids)
        assert ids[::-1] == list(range(ids[-1], ids[0] + 1))  # no gap, no repeat across the restart
        assert page.text_content("#update-log li.system") == "reconnected"

        assert errors == []
        assert all(url.startswith(base + "/") for url in requested), requested  # nothing external
    finally:
        for server in servers:
            server.stop(timeout=5)


def log_texts(page) -> list:
    """The chat log's lines, without their time stamps."""
    return page.eval_on_selector_all("#log li", "els => els.map(e => e.lastChild.textContent)")


def test_chat_example_two_pages_see_each_others_messages(browser):
    from examples import chat as example

    server = serve(example.app, host="127.0.0.1", port=0, background=True, access_log=False)
    base = server.url
    try:
        context_one, context_two = browser.new_context(), browser.new_context()
        one, two = context_one.new_page(), context_two.new_page()
        errors: list = []
        requested: list = []
        for page in (one, two):
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requested.append(request.url))

        one.goto(base + "/", timeout=WAIT_MS)
        one.wait_for_function("() => document.getElementById('state').textContent === 'open'", timeout=WAIT_MS)
        two.goto(base + "/", timeout=WAIT_MS)
        two.wait_for_function("() => document.getElementById('state').textContent === 'open'", timeout=WAIT_MS)

        def wait_for_line(page, pattern: str) -> None:
            page.wait_for_function(
                "(pattern) => [...document.querySelectorAll('#log li')]"
                ".some(li => new RegExp(pattern).test(li.lastChild.textContent))",
                arg=pattern,
                timeout=WAIT_MS,
                polling=50,
            )

        wait_for_line(one, r"^Welcome to the server!$")
        wait_for_line(one, r"^\[system\] .+ joined!$")  # the second page arrived

        # Typed and sent with Enter in one page, shown in the other (and echoed in the first)
        two.fill("#input", "hello from two")
        two.press("#input", "Enter")
        wait_for_line(one, r"^\[.+\] hello from two$")
        wait_for_line(two, r"^> hello from two$")
        wait_for_line(two, r"^hello from two$")  # the server's echo

        one.fill("#input", "and hello from one")
        one.click("#send")
        wait_for_line(two, r"^\[.+\] and hello from one$")

        # ping is answered to its sender only
        one.click("#ping")
        wait_for_line(one, r"^pong$")
        assert not any(text == "pong" or text.endswith("] ping") for text in log_texts(two))

        # Closing one page tells the other
        context_one.close()
        wait_for_line(two, r"^\[system\] .+ has left the chat!$")
        context_two.close()

        assert errors == []
        assert all(url.startswith((base + "/", base.replace("http", "ws") + "/")) for url in requested), requested
    finally:
        server.stop(timeout=5)


PAGE = """<!doctype html><title>deflate</title><pre id="out"></pre><script>
const ws = new WebSocket(`ws://${location.host}/_ws`);
const big = JSON.stringify({rows: Array.from({length: 50}, (_, i) => ({id: i, name: "row " + i}))});
window.result = {received: [], extensions: null};
ws.onopen = () => { window.result.extensions = ws.extensions; ws.send(big); ws.send("small"); };
ws.onmessage = (event) => { window.result.received.push(event.data); };
window.big = big;
</script>"""


def test_chromium_negotiates_permessage_deflate_and_messages_go_both_ways(browser, monkeypatch):
    from syncws import App, define_websocket_handler
    from syncws.protocol import deflate, payload

    inflated: list = []
    compressed: list = []
    inflate, compress = deflate.Inflater.inflate, payload.compress

    def counting_inflate(self, data, final, limit):
        out = inflate(self, data, final, limit)
        inflated.append(len(out))
        return out

    def counting_compress(data, bits, *args):
        compressed.append(len(data))
        return compress(data, bits, *args)

    monkeypatch.setattr(deflate.Inflater, "inflate", counting_inflate)
    monkeypatch.setattr(payload, "compress", counting_compress)
    seen: list = []
    app = App()
    app.get("/", lambda request: (PAGE, 200, {"Content-Type": "text/html"}))
    app.get(
        "/_ws",
        define_websocket_handler(
            open=lambda peer: seen.append(peer.websocket.extensions),
            message=lambda peer, message: peer.send(message.text()),
        ),
    )
    server = serve(app, host="127.0.0.1", port=0, background=True, access_log=False, compression="deflate")
    try:
        page = browser.new_page()
        page.goto(server.url + "/", timeout=WAIT_MS)
        page.wait_for_function("() => window.result.received.length === 2", timeout=WAIT_MS, polling=100)
        result = page.evaluate("window.result")
        big = page.evaluate("window.big")
        assert result["received"] == [big, "small"]
        assert result["extensions"].startswith("permessage-deflate")
        assert seen == [result["extensions"]]  # what the 101 said is what the browser agreed to
        assert len(big.encode()) in inflated  # Chromium sent the big message compressed
        assert compressed == [len(big.encode())]  # and we sent it back compressed (not "small")
    finally:
        server.stop(timeout=5)


def feed_counts(page, prefix: str) -> dict:
    return {name: page.text_content(f"#{prefix}-{name}") for name in ("count", "gaps", "dups", "last")}


def wait_count(page, prefix: str, above: int) -> None:
    page.wait_for_function(
        f"() => Number(document.getElementById('{prefix}-count').textContent) > {above}",
        timeout=WAIT_MS,
        polling=100,
    )


def test_feed_websocket_resumes_from_its_offset_after_a_drop(browser):
    """examples/feed.py: the page drops its WebSocket, reconnects with ?since= and misses nothing."""
    from examples import feed as example

    server = serve(example.app, host="127.0.0.1", port=0, background=True, access_log=False, history_size=1000)
    try:
        page = browser.new_page()
        errors: list = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url + "/", timeout=WAIT_MS)
        wait_count(page, "ws", 3)
        assert page.text_content("#ws-recovery") == "NOT recovered, replayed 0"  # a first visit: no since
        page.click("#ws-drop")  # the page reconnects one second later, with ?since=<last offset>
        page.wait_for_function(
            "() => document.getElementById('ws-recovery').textContent.startsWith('recovered')",
            timeout=WAIT_MS,
            polling=100,
        )
        replayed = int(page.text_content("#ws-recovery").rsplit(" ", 1)[1])
        assert replayed >= 1  # ticks kept coming during the second without a connection
        seen = int(page.text_content("#ws-count"))
        wait_count(page, "ws", seen + 2)  # and live ones after the replay
        counts = feed_counts(page, "ws")
        assert (counts["gaps"], counts["dups"]) == ("0", "0"), counts
        assert int(page.text_content("#ws-reconnects")) == 1
        assert feed_counts(page, "sse")["gaps"] == "0"
        assert errors == []
    finally:
        server.stop(timeout=5)


def test_feed_event_source_resumes_across_a_server_restart_with_redis(browser, tmp_path):
    """History in Redis: the browser misses nothing that was published while no server ran."""
    import json as jsonlib

    from examples import feed as example
    from syncws import Publisher

    from .support import RedisServer

    port = free_port()
    with RedisServer(tmp_path) as redis_server:

        def start():
            return serve(
                example.app,
                host="127.0.0.1",
                port=port,
                background=True,
                access_log=False,
                history_size=1000,
                broker=redis_server.url,
            )

        server = start()
        try:
            page = browser.new_page()
            errors: list = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server.url + "/", timeout=WAIT_MS)
            wait_count(page, "sse", 3)
            wait_count(page, "ws", 3)
            server.stop(timeout=5)  # a deploy: no server for a while...
            page.wait_for_function(
                "() => document.getElementById('sse-state').textContent === 'reconnecting'",
                timeout=WAIT_MS,
                polling=100,
            )
            client = redis_server.client(decode_responses=False)
            newest = client.xrevrange("syncws:h:%2Fws:ticks", count=1)[0][1]
            n = jsonlib.loads(newest[b"d"])["n"]
            with Publisher(redis_server.url) as publisher:  # ...while a job goes on publishing
                for extra in range(1, 4):
                    publisher.publish("ticks", {"n": n + extra}, namespace="/ws")
            before = {prefix: int(page.text_content(f"#{prefix}-count")) for prefix in ("sse", "ws")}
            server = start()  # back on the same port, with the same Redis
            wait_count(page, "sse", before["sse"] + 5)  # the missed ticks, the job's three, then live ones
            wait_count(page, "ws", before["ws"] + 5)
            for prefix in ("sse", "ws"):
                counts = feed_counts(page, prefix)
                assert (counts["gaps"], counts["dups"]) == ("0", "0"), (prefix, counts)
                assert int(counts["last"]) > n + 3
            assert page.text_content("#ws-recovery").startswith("recovered")
            assert errors == []
        finally:
            server.stop(timeout=5)


TLS_PAGE = """<!doctype html><title>tls</title><script>
window.result = {ws: null, sse: null};
const ws = new WebSocket(`wss://${location.host}/_ws`);
ws.onopen = () => ws.send("over tls");
ws.onmessage = (event) => { window.result.ws = event.data; };
const source = new EventSource("/sse");
source.onmessage = (event) => { window.result.sse = event.data; source.close(); };
</script>"""


def test_chromium_over_wss_and_https_event_streams(browser, tmp_path):
    """TLS in the server: a page served over https talks wss:// and EventSource (test certificate accepted)."""
    import trustme

    from syncws import App, create_event_stream, define_websocket_handler

    cert = trustme.CA().issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(certfile)
    cert.private_key_pem.write_to_path(keyfile)
    app = App()
    app.get("/", lambda request: TLS_PAGE)
    app.get("/_ws", define_websocket_handler(message=lambda peer, msg: peer.send(f"{peer.websocket.url}: {msg}")))

    @app.get("/sse")
    def sse(request):
        stream = create_event_stream(request, keep_alive=None)
        stream.push(f"event over {request.scheme}")
        return stream

    server = serve(app, port=0, background=True, access_log=False, certfile=str(certfile), keyfile=str(keyfile))
    try:
        context = browser.new_context(ignore_https_errors=True)  # the test CA is not the browser's
        page = context.new_page()
        errors: list = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url + "/", timeout=WAIT_MS)
        page.wait_for_function("() => window.result.ws && window.result.sse", timeout=WAIT_MS, polling=100)
        result = page.evaluate("window.result")
        assert result == {"ws": f"wss://127.0.0.1:{server.port}/_ws: over tls", "sse": "event over https"}
        assert errors == []
        context.close()
    finally:
        server.stop(timeout=5)
