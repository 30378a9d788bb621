# Run:  python examples/legacy.py         (http://127.0.0.1:3000; set PORT=8000 for another port; Ctrl-C stops)
"""A "legacy" program that embeds syncws: no gevent, no monkey-patching.

The program's main thread is ordinary blocking code (a ``time.sleep`` tick
loop standing in for a job runner, a hardware poller, a Tk/Qt event loop...).
``serve(app, background=True)`` runs the server in its own OS thread with its
own gevent hub and returns at once; the main thread publishes a counter to
the ``ticks`` topic every second with ``server.publish``, which is safe from
any thread.  Open http://127.0.0.1:3000: the page shows the counter through a
WebSocket (``/_ws``) and through Server-Sent Events (``/events``).

The hooks use the standard library's blocking calls (``time.sleep`` here, a
blocking database driver in real life): the process is not monkey-patched, so
the server runs views and hooks in a pool of OS threads (the ``threads`` option,
``auto`` by default) and one slow hook does not freeze every other peer.
Ctrl-C ends the loop, then ``server.stop()`` closes the peers (1001) and ends
the streams before the program exits.
"""

import logging
import os
import time

from syncws import App, create_event_stream, define_websocket_handler, serve

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>syncws in a legacy program</title>
<p>WebSocket: <b id="ws">-</b> &nbsp; SSE: <b id="sse">-</b></p>
<p><input id="say" placeholder="type and press Enter (the hook sleeps 2 s)"></p>
<pre id="log"></pre>
<script>
const ws = new WebSocket(location.origin.replace("http", "ws") + "/_ws");
ws.onmessage = (e) => {
  const data = JSON.parse(e.data);
  if ("tick" in data) document.getElementById("ws").textContent = data.tick;
  else document.getElementById("log").textContent += data.reply + "\\n";
};
const events = new EventSource("/events");
events.onmessage = (e) => { document.getElementById("sse").textContent = JSON.parse(e.data).tick; };
document.getElementById("say").onkeydown = (e) => {
  if (e.key === "Enter") { ws.send(e.target.value); e.target.value = ""; }
};
</script>
"""

app = App()


@app.get("/")
def index(request):
    return PAGE, 200, {"Content-Type": "text/html; charset=utf-8"}


def on_open(peer):
    peer.subscribe("ticks")


def on_message(peer, message):
    time.sleep(2)  # a blocking call, e.g. a query through a C database driver
    peer.send({"reply": f"slowly processed {message.text()!r}"})


app.get("/_ws", define_websocket_handler(open=on_open, message=on_message))


@app.get("/events")
def events(request):
    stream = create_event_stream(request)
    stream.subscribe("ticks")
    return stream


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    port = int(os.environ.get("PORT", "3000"))
    server = serve(app, host="127.0.0.1", port=port, background=True)  # returns at once
    print(f"legacy program running; syncws on {server.url} (Ctrl-C to stop)", flush=True)
    counter = 0
    try:
        while True:  # the legacy program's own blocking main loop
            time.sleep(1)
            counter += 1
            server.publish("ticks", {"tick": counter})
    except KeyboardInterrupt:
        print("stopping...", flush=True)
    finally:
        server.stop()
    print("server stopped; bye", flush=True)


if __name__ == "__main__":
    main()
