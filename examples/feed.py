# Run:  python examples/feed.py            (http://127.0.0.1:3000; REDIS_URL=redis://... to keep history in Redis)
#   or: python -m syncws examples.feed:app --history-size 1000 [--broker redis://localhost:6379/0]
"""A live feed that loses nothing when a client reconnects: open http://127.0.0.1:3000.

The server publishes a numbered tick to the ``ticks`` topic five times a
second, and keeps the last 1,000 in its history.  The page follows it twice,
both through ``syncws.js`` (docs/browser.md), with no reconnect code of its own:

* a channels client (``/ws`` is a ``Channels`` endpoint): it keeps the offset of
  the last tick, and after a drop reconnects with back-off and subscribes
  again from that offset: the server replays what it missed, then goes live;
* an ``EventSource`` (``events()``), which sends ``Last-Event-ID`` by itself when
  it reconnects (each event's ``id:`` is its offset); the server says so when
  what was missed is no longer stored, and the page reloads.

Both count gaps and repeats in the tick numbers: press "drop" or restart the
server and both stay at zero.  With the Redis broker, the history survives a
restart of the server (and is shared by every process), so the ticks
published while no server ran are replayed too.
"""

import threading
import time

from syncws import App, Channels, ServerNotRunning, client_js, create_event_stream, current_server

NAMESPACE = "/ws"  # the WebSocket's path: the stream publishes into the same history
app = App()
_producers = {}  # server -> its producer thread
_producers_lock = threading.Lock()  # views and hooks may run in several threads at once


def produce(server):
    """Publish a tick every 0.2 s, numbered on from the newest one in the history."""
    newest = server.history("ticks", NAMESPACE, limit=1)
    n = newest[0].data["n"] if newest else 0
    while not server.finished:
        n += 1
        try:
            server.publish("ticks", {"n": n}, namespace=NAMESPACE)
        except ServerNotRunning:
            return  # the server stopped meanwhile
        time.sleep(0.2)


def start_producing(server):
    with _producers_lock:
        producer = _producers.get(server)
        if producer is None or not producer.is_alive():  # once per server, on its first client
            # A thread: a greenlet when the process is patched, an OS thread when it is not
            # (then this runs in the server's thread pool, where gevent.spawn starts nothing).
            _producers[server] = threading.Thread(target=produce, args=(server,), daemon=True)
            _producers[server].start()


feed = Channels(open=lambda peer: start_producing(peer.server))  # clients subscribe; nobody publishes


@feed.rpc("drop")
def drop(peer, params):
    """The page's "drop" button: the server closes this connection, as a network failure would."""
    peer.close(1012, "dropped on request")


app.get(NAMESPACE, feed)
app.get("/syncws.js", client_js)


@app.get("/events")
def events(request):
    start_producing(current_server())
    stream = create_event_stream(request, namespace=NAMESPACE, retry=500)
    result = stream.subscribe("ticks")  # replays after Last-Event-ID, when the browser sends one
    if stream.last_event_id and not result.recovered:
        stream.push({"event": "recovery", "data": {"recovered": False}})  # the page reloads its state
    return stream


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>syncws: a feed that loses nothing</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 2rem; color: #18181b; }
  section { display: inline-block; vertical-align: top; width: 22rem; margin-right: 2rem; }
  dl { display: grid; grid-template-columns: 9rem 1fr; gap: .2rem .8rem; }
  dt { color: #71717a; }
  .bad { color: #dc2626; font-weight: bold; }
</style>
</head>
<body>
<h1>A feed that loses nothing</h1>
<section>
  <h2>WebSocket <button id="ws-drop" type="button">drop</button></h2>
  <dl>
    <dt>state</dt><dd id="ws-state">connecting</dd>
    <dt>ticks received</dt><dd id="ws-count">0</dd>
    <dt>last tick</dt><dd id="ws-last">-</dd>
    <dt>gaps</dt><dd id="ws-gaps">0</dd>
    <dt>repeats</dt><dd id="ws-dups">0</dd>
    <dt>last offset</dt><dd id="ws-offset">-</dd>
    <dt>reconnects</dt><dd id="ws-reconnects">0</dd>
    <dt>last recovery</dt><dd id="ws-recovery">-</dd>
  </dl>
</section>
<section>
  <h2>EventSource</h2>
  <dl>
    <dt>state</dt><dd id="sse-state">connecting</dd>
    <dt>ticks received</dt><dd id="sse-count">0</dd>
    <dt>last tick</dt><dd id="sse-last">-</dd>
    <dt>gaps</dt><dd id="sse-gaps">0</dd>
    <dt>repeats</dt><dd id="sse-dups">0</dd>
    <dt>last event id</dt><dd id="sse-offset">-</dd>
  </dl>
</section>
<script type="module">
import { connect, events } from "/syncws.js";

const $ = (id) => document.getElementById(id);

// Counts ticks for one client; a gap or a repeat in the numbers is shown in red.
function counter(prefix) {
  let last = null;
  return (n, offset) => {
    if (last !== null && n !== last + 1) {
      const field = n <= last ? $(prefix + "-dups") : $(prefix + "-gaps");
      field.textContent = Number(field.textContent) + (n <= last ? 1 : n - last - 1);
      field.className = "bad";
    }
    last = Math.max(last ?? n, n);
    $(prefix + "-count").textContent = Number($(prefix + "-count").textContent) + 1;
    $(prefix + "-last").textContent = n;
    $(prefix + "-offset").textContent = offset;
  };
}

// The channels client keeps the offset of the last tick and resumes from it by itself.
const wsTick = counter("ws");
const client = connect((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
client.addEventListener("connecting", () => { $("ws-state").textContent = "connecting"; });
client.addEventListener("connected", () => { $("ws-state").textContent = "open"; });
client.addEventListener("disconnected", () => {
  $("ws-state").textContent = "reconnecting";
  $("ws-reconnects").textContent = Number($("ws-reconnects").textContent) + 1;
});
client.subscribe("ticks", {
  onMessage: (data, publication) => wsTick(data.n, publication.offset),
  onSubscribed: (s) => {
    $("ws-recovery").textContent = (s.recovered ? "recovered" : "NOT recovered") + ", replayed " + s.replayed;
  },
});
$("ws-drop").addEventListener("click", () => client.rpc("drop").catch(() => {}));

// EventSource resumes by itself: it sends Last-Event-ID when it reconnects.
const sseTick = counter("sse");
const source = events("/events", {
  onMessage: (data, event) => sseTick(JSON.parse(data).n, event.lastEventId),
  onReload: () => location.reload(),
});
source.onopen = () => { $("sse-state").textContent = "open"; };
source.onerror = () => { $("sse-state").textContent = "reconnecting"; };
</script>
</body>
</html>
"""

app.get("/", lambda request: PAGE)

if __name__ == "__main__":
    import os

    from _common import run  # examples/ is on sys.path when this file is run as a script

    run(
        app,
        "feed: open {url}/, press drop or restart the server: nothing is missed",
        history_size=1000,
        broker=os.environ.get("REDIS_URL"),
    )
