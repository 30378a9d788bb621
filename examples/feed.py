# Run:  python examples/feed.py            (http://127.0.0.1:3000; REDIS_URL=redis://... to keep history in Redis)
#   or: python -m syncws examples.feed:app --history-size 1000 [--broker redis://localhost:6379/0]
"""A live feed that loses nothing when a client reconnects: open http://127.0.0.1:3000.

The server publishes a numbered tick to the ``ticks`` topic five times a
second, and keeps the last 1,000 in its history.  The page follows it twice:

* a WebSocket that subscribes with ``envelope=True`` (every message carries its
  offset), keeps the last offset, and after a drop reconnects with
  ``?since=<offset>``: the server replays what it missed, then goes live;
* an ``EventSource``, which sends ``Last-Event-ID`` by itself when it
  reconnects (each event's ``id:`` is its offset).

Both count gaps and repeats in the tick numbers: press "drop" or restart the
server and both stay at zero.  With the Redis broker, the history survives a
restart of the server (and is shared by every process), so the ticks
published while no server ran are replayed too.
"""

import threading
import time

from syncws import App, ServerNotRunning, create_event_stream, current_server, define_websocket_handler

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


def on_open(peer):
    start_producing(peer.server)
    since = peer.request.args.get("since")  # the last offset this client saw, if any
    result = peer.subscribe("ticks", since=since, envelope=True)
    # Sent after the replay: says whether everything missed was still stored.
    peer.send({"recovery": {"recovered": result.recovered, "replayed": result.replayed, "offset": result.offset}})


app.get(NAMESPACE, define_websocket_handler(open=on_open))


@app.get("/events")
def events(request):
    start_producing(current_server())
    stream = create_event_stream(request, namespace=NAMESPACE, retry=500)
    stream.subscribe("ticks")  # replays after Last-Event-ID, when the browser sends one
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
<script>
(() => {
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

  // The WebSocket keeps the offset of the last message and resumes from it.
  const wsTick = counter("ws");
  let offset = null;
  let ws = null;
  function connect() {
    const query = offset ? "?since=" + encodeURIComponent(offset) : "";
    ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws" + query);
    $("ws-state").textContent = "connecting";
    ws.onopen = () => { $("ws-state").textContent = "open"; };
    ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.recovery) {
        const r = message.recovery;
        $("ws-recovery").textContent = (r.recovered ? "recovered" : "NOT recovered") + ", replayed " + r.replayed;
        return;
      }
      offset = message.offset;  // an envelope: {"topic", "offset", "data"}
      wsTick(message.data.n, message.offset);
    };
    ws.onclose = () => {
      $("ws-state").textContent = "reconnecting";
      $("ws-reconnects").textContent = Number($("ws-reconnects").textContent) + 1;
      setTimeout(connect, 1000);
    };
  }
  $("ws-drop").addEventListener("click", () => ws && ws.close());
  connect();

  // EventSource resumes by itself: it sends Last-Event-ID when it reconnects.
  const sseTick = counter("sse");
  const source = new EventSource("/events");
  source.onopen = () => { $("sse-state").textContent = "open"; };
  source.onerror = () => { $("sse-state").textContent = "reconnecting"; };
  source.onmessage = (event) => { sseTick(JSON.parse(event.data).n, event.lastEventId); };
})();
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
