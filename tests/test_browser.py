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

The ``syncws.js`` tests drive the channels client in pages: RPC results, errors
and timeouts, a refused subscription and a refused token (no retry loop), a
token refreshed on the live connection, 20 pages whose reconnects spread over
the back-off window, a hidden page that waits and a visible one that hurries,
and a server killed while a ``Publisher`` publishes (nothing lost, or
``recovered`` false when the history was trimmed meanwhile).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time

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
        one.wait_for_function(  # its own join, then the second page's
            "() => [...document.querySelectorAll('#log li')].filter(li => / joined!$/.test(li.textContent)).length >= 2",
            timeout=WAIT_MS,
        )

        # Typed and sent with Enter in one page, shown in both under the sender's name
        two.fill("#input", "hello from two")
        two.press("#input", "Enter")
        wait_for_line(one, r"^\[guest-\w+\] hello from two$")
        wait_for_line(two, r"^> hello from two$")
        wait_for_line(two, r"^\[guest-\w+\] hello from two$")  # published to the sender too

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
    """examples/feed.py: the server drops the page's connection; syncws.js resumes from its offset, missing nothing."""
    from examples import feed as example

    server = serve(example.app, host="127.0.0.1", port=0, background=True, access_log=False, history_size=1000)
    try:
        page = browser.new_page()
        errors: list = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url + "/", timeout=WAIT_MS)
        wait_count(page, "ws", 3)
        assert page.text_content("#ws-recovery") == "NOT recovered, replayed 0"  # a first visit: no since
        page.click("#ws-drop")  # the client reconnects after its back-off and resubscribes from its offset
        page.wait_for_function(
            "() => document.getElementById('ws-recovery').textContent.startsWith('recovered')",
            timeout=WAIT_MS,
            polling=100,
        )
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
            newest = client.xrevrange("syncws:{ticks}:h:%2Fws", count=1)[0][1]
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


# -- syncws.js, the channels client, in Chromium -------------------------------------------------


def client_page(browser, url: str):
    """A page that loaded /syncws.js (``window.syncws``); page errors fail the test at its end."""
    page = browser.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(url + "/", timeout=WAIT_MS)
    page.wait_for_function("() => window.syncws !== undefined", timeout=WAIT_MS)
    return page


def channels_app(**options):
    from syncws import App, Channels, Refused, RPCError, client_js
    from tests.apps.channels_app import PAGE

    def connect(request, token):
        user, _, serial = (token or "").partition(":")
        if user != "ann":
            raise Refused("who?")
        return {"user": user, "info": {"serial": serial}, "expires_in": 1.5}

    channels = Channels(
        connect=connect, authorize=lambda peer, action, topic: topic != "secret", refresh_window=1.0, **options
    )
    channels.rpc("add")(lambda peer, params: sum(params))
    channels.rpc("serial")(lambda peer, params: peer.user_info["serial"])

    @channels.rpc("fail")
    def fail(peer, params):
        raise RPCError("no_room", "there is no such room")

    @channels.rpc("slow")
    def slow(peer, params):
        import time

        time.sleep(1)

    app = App()
    app.get("/", lambda request: PAGE)
    app.get("/syncws.js", client_js)
    app.get("/_syncws", channels)
    return app


def test_client_rpcs_refusals_and_a_token_refreshed_on_the_live_connection(browser, start_server):
    server = start_server(channels_app())
    page = client_page(browser, server.url)
    out = page.evaluate(
        """async () => {
          let n = 0;
          window.tokens = [];
          window.log = [];
          const c = (window.c = syncws.connect(`ws://${location.host}/_syncws`, {
            getToken: () => { const t = "ann:" + ++n; tokens.push(t); return t; },
          }));
          for (const type of ["connecting", "connected", "disconnected"]) c.addEventListener(type, () => log.push(type));
          const out = { sum: await c.rpc("add", [2, 3]) };
          try { await c.rpc("fail"); } catch (e) { out.fail = [e.name, e.code, e.message]; }
          try { await c.rpc("slow", null, { timeout: 300 }); } catch (e) { out.slow = e.code; }
          const errors = [];
          const sub = c.subscribe("secret", { onError: (e) => errors.push(e.code) });
          try { await sub.ready; } catch (e) { out.secret = [e.code, errors, c.subscriptions.size]; }
          return out;
        }"""
    )
    assert out == {
        "sum": 5,
        "fail": ["SyncwsError", "no_room", "no_room: there is no such room"],
        "slow": "timeout",
        "secret": ["forbidden", ["forbidden"], 0],
    }
    page.wait_for_timeout(3500)  # past two expiries of 1.5 s
    state = page.evaluate("async () => [c.state, c.reconnects, log, tokens.length, await c.rpc('serial')]")
    assert state[:3] == ["connected", 0, ["connecting", "connected"]]  # one connection, refreshed in place
    assert state[3] >= 3 and state[4] == str(state[3])
    assert page.errors == []


def test_a_refused_token_stops_the_client_without_a_retry_loop(browser, start_server):
    server = start_server(channels_app())
    page = client_page(browser, server.url)
    detail = page.evaluate(
        """() => new Promise((resolve) => {
          const c = syncws.connect(`ws://${location.host}/_syncws`, { token: "mallory", backoffBase: 10 });
          c.addEventListener("disconnected", (e) => resolve([e.detail.code, e.detail.reason, e.detail.willRetry, c.state]));
        })"""
    )
    assert detail == [4001, "who?", False, "closed"]
    page.wait_for_timeout(300)
    assert server.stats()["totals"]["websocket_connections"] == 1


def test_twenty_pages_spread_their_reconnects_and_a_visible_page_hurries(browser, start_server):
    server = start_server(channels_app())
    pages = [client_page(browser, server.url) for _ in range(20)]
    for page in pages:
        page.evaluate(
            """() => new Promise((resolve) => {
              window.attempts = [];
              const c = (window.c = syncws.connect(`ws://${location.host}/_syncws`, {
                getToken: () => "ann:1", backoffBase: 2000, backoffCap: 2000,
              }));
              c.addEventListener("connecting", () => attempts.push(Date.now()));
              c.addEventListener("connected", () => resolve(), { once: true });
            })"""
        )
    server.close_all(1012, "restart")  # every page loses its connection at the same moment
    for page in pages:
        # >= 2: on a loaded host a retry may time out and be followed by another; the first is what is measured.
        page.wait_for_function("() => attempts.length >= 2 && c.state === 'connected'", timeout=WAIT_MS)
    retries = sorted(page.evaluate("() => attempts[1]") for page in pages)
    spread = retries[-1] - retries[0]
    buckets = {(t - retries[0]) // 100 for t in retries}
    assert spread > 600, retries  # full jitter over 2 s, not one wave
    assert len(buckets) >= 6, retries

    # A page waiting out a long back-off reconnects soon when it becomes visible again.
    page = pages[0]
    for _ in range(5):  # until the back-off drawn is long enough to tell apart
        page.evaluate(
            """() => { window.waiting = new Promise((resolve) =>
                 c.addEventListener("disconnected", (e) => resolve(e.detail.delay), { once: true }));
               c.options.backoffBase = c.options.backoffCap = 60000; }"""
        )
        server.close_all(1012, "restart")
        delay = page.evaluate("() => waiting")
        if delay > 10_000:
            break
        page.wait_for_function("() => c.state === 'connected'", timeout=WAIT_MS)
    assert delay > 10_000
    hidden = """(state) => {
      Object.defineProperty(document, "visibilityState", { value: state, configurable: true });
      document.dispatchEvent(new Event("visibilitychange", { bubbles: true })); // as the browser fires it
    }"""
    page.evaluate(hidden, "hidden")
    page.wait_for_timeout(1500)
    assert page.evaluate("() => c.state") == "disconnected"  # hidden: it does not hurry
    page.evaluate(hidden, "visible")
    page.wait_for_function("() => c.state === 'connected'", timeout=3000)
    assert all(page.errors == [] for page in pages)


def channels_process(redis_url: str, port: int, history_size: int):
    """``python -m syncws tests.apps.channels_app:app`` on ``port`` with history in Redis (a 1 s drain on SIGTERM)."""
    from pathlib import Path

    from .support import SyncwsProcess

    process = SyncwsProcess(
        "tests.apps.channels_app:app", "--port", str(port), "--broker", redis_url,
        "--history-size", str(history_size), "--no-access-log", "--drain-period", "1",
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    process.wait_for_url()
    return process


def subscribed_page(browser, port: int):
    """A page whose client records every tick (``got``) and every (re)subscribe (``resumes``)."""
    page = client_page(browser, f"http://127.0.0.1:{port}")
    page.evaluate(
        """() => new Promise((resolve) => {
          window.got = [];
          window.resumes = [];
          const c = (window.c = syncws.connect(`ws://${location.host}/_syncws`, {
            token: "ann", getToken: () => "ann", backoffBase: 200, backoffCap: 1000,
          }));
          c.subscribe("ticks", {
            onMessage: (data) => got.push(data),
            onSubscribed: (s) => { resumes.push([s.wasRecovering, s.recovered]); if (resumes.length === 1) resolve(); },
          });
        })"""
    )
    return page


class KillableApp:
    """The channels app in a subprocess on a port of its own, with history in Redis: kill it, start it again."""

    def __init__(self, redis_url: str, history_size: int) -> None:
        self.redis_url, self.history_size, self.port = redis_url, history_size, free_port()
        self.process = channels_process(redis_url, self.port, history_size)

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no close frame, no goodbye

    def drain(self) -> None:
        """SIGTERM, as a deploy does: its clients are told 1012; wait for the process to end."""
        self.process.proc.send_signal(signal.SIGTERM)
        assert self.process.finish() == 0

    def restart(self) -> None:
        self.process = channels_process(self.redis_url, self.port, self.history_size)


@pytest.fixture
def killable(tmp_path):
    """``killable(history_size)``: a :class:`KillableApp` on a private redis-server, killed at the end."""
    from .support import RedisServer

    apps: list[KillableApp] = []
    with RedisServer(tmp_path) as redis_server:

        def start(history_size: int) -> KillableApp:
            apps.append(KillableApp(redis_server.url, history_size))
            return apps[-1]

        yield start
        for app in apps:
            app.kill()


def test_the_client_loses_nothing_across_a_killed_server(browser, killable):
    """A Publisher publishes while the server is killed and restarted (history in Redis)."""
    from syncws import Publisher

    app = killable(1000)
    page = subscribed_page(browser, app.port)
    with Publisher(app.redis_url) as publisher:
        for n in range(300):
            publisher.publish("ticks", n)
            if n == 100:
                app.kill()
            if n == 200:
                app.restart()
            time.sleep(0.01)
    assert_resumed_without_loss(page, 300)


def assert_resumed_without_loss(page, count: int) -> None:
    """The page got ticks 0 to ``count - 1`` once each, and its one resume recovered."""
    page.wait_for_function(f"() => got.length >= {count}", timeout=WAIT_MS)
    assert page.evaluate("() => got") == list(range(count))  # 0 gaps, 0 repeats
    assert page.evaluate("() => resumes") == [[False, False], [True, True]]
    assert page.errors == []


def test_the_client_obeys_a_drain_and_resumes_on_the_restarted_server(browser, killable):
    """A rolling restart of one instance: 1012, back-off while nothing listens, then a lossless resume."""
    from syncws import Publisher

    app = killable(1000)
    page = subscribed_page(browser, app.port)
    with Publisher(app.redis_url) as publisher:
        for n in range(100):
            publisher.publish("ticks", n)
        page.wait_for_function("() => got.length === 100", timeout=WAIT_MS)
        page.evaluate(
            "() => { window.closes = []; c.addEventListener('disconnected', (e) => closes.push(e.detail.code)); }"
        )
        app.drain()
        for n in range(100, 200):  # published while no server runs
            publisher.publish("ticks", n)
        app.restart()
    assert_resumed_without_loss(page, 200)
    assert page.evaluate("() => closes[0]") == 1012  # told to reconnect, not dropped


def test_the_client_says_when_history_was_trimmed_during_the_outage(browser, killable):
    from syncws import Publisher

    app = killable(5)
    page = subscribed_page(browser, app.port)
    with Publisher(app.redis_url) as publisher:
        publisher.publish("ticks", "before")
        page.wait_for_function("() => got.length === 1", timeout=WAIT_MS)
        app.kill()
        for n in range(20):  # the history keeps 5: 15 are gone when the page comes back
            publisher.publish("ticks", n)
    app.restart()
    page.wait_for_function("() => resumes.length === 2", timeout=WAIT_MS)
    assert page.evaluate("() => resumes.at(-1)") == [True, False]
    assert page.evaluate("() => got") == ["before", 15, 16, 17, 18, 19]
    assert page.errors == []


EVENTS_PAGE = """<!doctype html><title>events()</title><script type="module">
import { events } from "/syncws.js";
window.got = [];
window.reloads = 0;
events("/ticks", { onMessage: (data) => got.push(data), onReload: () => { window.reloads += 1; } });
</script>"""


def test_events_resumes_and_reloads_when_the_server_lost_what_was_missed(browser):
    """The documented pattern: a stream that could not recover sends a "recovery" event."""
    from syncws import App, client_js, create_event_stream

    def ticks(request):
        stream = create_event_stream(request, retry=200)
        result = stream.subscribe("ticks")
        if stream.last_event_id and not result.recovered:
            stream.push({"event": "recovery", "data": {"recovered": False}})
        return stream

    app = App()
    app.get("/", lambda request: EVENTS_PAGE)
    app.get("/syncws.js", client_js)
    app.get("/ticks", ticks)
    port = free_port()
    server = serve(app, host="127.0.0.1", port=port, background=True, access_log=False, history_size=100)
    try:
        page = browser.new_page()
        page.goto(server.url + "/", timeout=WAIT_MS)
        assert wait_until(lambda: server.presence_count("ticks") == 0 and server.stats()["connections"]["sse"] == 1)
        server.publish("ticks", "one")
        page.wait_for_function("() => got.length === 1", timeout=WAIT_MS)
        server.stop(timeout=5)  # the history was in memory: the new server has none of it
        server = serve(app, host="127.0.0.1", port=port, background=True, access_log=False, history_size=100)
        page.wait_for_function("() => reloads === 1", timeout=WAIT_MS)
        server.publish("ticks", "two")
        page.wait_for_function("() => got.length === 2", timeout=WAIT_MS)
        assert page.evaluate("() => got") == ["one", "two"]
    finally:
        server.stop(timeout=5)
