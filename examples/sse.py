# Run:  python examples/sse.py            (http://127.0.0.1:3000; set PORT=8000 for another port)
#   or: python -m syncws examples.sse:app --port 3000
"""Server-Sent Events on syncws, a clock stream and a structured stream: open http://127.0.0.1:3000.

``/sse`` is the clock stream ("Message @ <time>" every second), ``/events`` the
structured stream (an incrementing ``id``, ``event: update``, JSON data and
``retry: 3000``).  The page shows both through ``EventSource``.  Stop the
server and start it again: the browser reconnects on its own, sends the last
``id`` it saw as ``Last-Event-ID``, and the update counter carries on from it.
"""

import json
import random
import threading
import time

from syncws import App, create_event_stream

app = App()


def set_interval(callback, seconds):
    """JavaScript's ``setInterval``: call ``callback`` every ``seconds`` in a thread of its own.

    A ``threading.Thread`` is a greenlet when the process is monkey-patched
    (``python -m syncws``) and an OS thread when it is not (the view then runs
    in the server's thread pool, where ``gevent.spawn`` would start nothing).
    Returns the function that stops it (``clearInterval``).
    """
    stopped = threading.Event()

    def loop():
        while not stopped.wait(seconds):
            callback()

    threading.Thread(target=loop, daemon=True).start()
    return stopped.set


@app.get("/sse")
def sse(request):
    stream = create_event_stream(request)

    # Send a message every second
    stop = set_interval(lambda: stream.push(f"Message @ {time.strftime('%H:%M:%S')}"), 1)

    # Clean up the interval when the client goes away, the stream is closed
    # or the server shuts down
    stream.on_closed(stop)

    return stream.send()


def next_id(last_event_id):
    """Carry on after the last id the client saw (EventSource sends it on reconnect)."""
    try:
        return int(last_event_id) + 1
    except (TypeError, ValueError):
        return 0


@app.get("/events")
def events(request):
    stream = create_event_stream(request)
    counter = {"id": next_id(stream.last_event_id)}

    def update():
        stream.push(
            {
                "id": str(counter["id"]),
                "event": "update",
                "data": json.dumps({"value": random.random()}, separators=(",", ":")),
                "retry": 3000,
            }
        )
        counter["id"] += 1

    stream.on_closed(set_interval(update, 1))
    return stream.send()


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>syncws server-sent events</title>
<style>
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.4 system-ui, sans-serif; background: #f4f4f5; color: #18181b; }
  header { padding: .6rem 1rem; background: #18181b; color: #fafafa; }
  header h1 { font-size: 1rem; margin: 0; }
  main { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 1rem; padding: 1rem; }
  section { background: #fff; border-radius: 8px; padding: .75rem 1rem; min-height: 60vh; }
  h2 { display: flex; align-items: center; gap: .5rem; font-size: .95rem; margin: 0 0 .5rem; }
  h2 code { font-weight: normal; color: #52525b; }
  .state { margin-left: auto; font-size: .75rem; font-weight: normal; padding: .1rem .55rem;
           border-radius: 999px; background: #a1a1aa; color: #fff; }
  .state.open { background: #16a34a; }
  .state.connecting { background: #ca8a04; }
  .latest { font: 1.4rem/1.3 ui-monospace, monospace; margin: .25rem 0 .75rem; min-height: 1.8rem; }
  ul { list-style: none; margin: 0; padding: 0; font: .85rem/1.5 ui-monospace, monospace; }
  li { padding: .1rem 0; border-bottom: 1px solid #f4f4f5; }
  li.system { color: #71717a; font-style: italic; font-family: system-ui, sans-serif; }
  .count { color: #71717a; font-size: .8rem; }
</style>
</head>
<body>
<header><h1>syncws &middot; Server-Sent Events</h1></header>
<main>
  <section>
    <h2>Clock <code>/sse</code> <code>onmessage</code><span id="clock-state" class="state">idle</span></h2>
    <div id="clock-latest" class="latest"></div>
    <div class="count"><span id="clock-count">0</span> messages</div>
    <ul id="clock-log"></ul>
  </section>
  <section>
    <h2>Updates <code>/events</code> <code>update</code><span id="update-state" class="state">idle</span></h2>
    <div id="update-latest" class="latest"></div>
    <div class="count"><span id="update-count">0</span> updates, last id <span id="update-last-id">-</span></div>
    <ul id="update-log"></ul>
  </section>
</main>
<script>
(() => {
  const MAX_ITEMS = 30;

  function show(list, text, attrs) {
    const item = document.createElement("li");
    item.textContent = text;
    Object.assign(item.dataset, attrs || {});
    if (attrs && attrs.kind) item.className = attrs.kind;
    list.prepend(item);
    while (list.children.length > MAX_ITEMS) list.lastChild.remove();
  }

  function watch(source, name, list) {
    const state = document.getElementById(name + "-state");
    let opened = 0;
    source.onopen = () => {
      state.textContent = "open";
      state.className = "state open";
      show(list, opened++ ? "reconnected" : "connected", { kind: "system" });
    };
    source.onerror = () => {
      // EventSource reconnects by itself (after the server's retry delay)
      const closed = source.readyState === EventSource.CLOSED;
      state.textContent = closed ? "closed" : "reconnecting";
      state.className = "state " + (closed ? "" : "connecting");
    };
  }

  // The clock: plain messages, read with onmessage
  const clock = new EventSource("/sse");
  const clockLog = document.getElementById("clock-log");
  let clockCount = 0;
  watch(clock, "clock", clockLog);
  clock.onmessage = (event) => {
    document.getElementById("clock-latest").textContent = event.data;
    document.getElementById("clock-count").textContent = String(++clockCount);
    show(clockLog, event.data, { kind: "message" });
  };

  // Structured events: id + "update" + JSON data, read with addEventListener
  const updates = new EventSource("/events");
  const updateLog = document.getElementById("update-log");
  let updateCount = 0;
  watch(updates, "update", updateLog);
  updates.addEventListener("update", (event) => {
    const { value } = JSON.parse(event.data);
    const text = "#" + event.lastEventId + "  value " + value.toFixed(6);
    document.getElementById("update-latest").textContent = text;
    document.getElementById("update-count").textContent = String(++updateCount);
    document.getElementById("update-last-id").textContent = event.lastEventId;
    show(updateLog, text, { kind: "update", id: event.lastEventId, value: String(value) });
  });
})();
</script>
</body>
</html>
"""


app.get("/", lambda request: PAGE)

if __name__ == "__main__":
    from _common import run  # examples/ is on sys.path when this file is run as a script

    run(app, "sse: open {url}/")
