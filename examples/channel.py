# Run:  python examples/channel.py         (http://127.0.0.1:3000; set PORT=8000 for another port)
#   or: python -m syncws examples.channel:app --port 3000
"""Namespaces chosen by a query parameter, as in the Nitro docs' example.

``ws://127.0.0.1:3000/_ws?channel=news`` and ``...?channel=sport`` share one
route but not their messages: the ``upgrade`` hook puts each peer in the
namespace ``chat:<channel>`` (``chat:general`` without the parameter), and a
publish reaches only the subscribers of its own namespace.  Open the page in
two tabs with ``?channel=a`` and a third with ``?channel=b``.
"""

import re

from werkzeug.exceptions import abort

from syncws import App, define_websocket_handler

app = App()

CHANNEL = re.compile(r"[A-Za-z0-9_-]{1,32}")


def upgrade(request):
    channel = request.args.get("channel", "general")
    if not CHANNEL.fullmatch(channel):
        abort(400, "channel: 1 to 32 letters, digits, '-' or '_'")
    return {"namespace": f"chat:{channel}", "context": {"channel": channel}}


def on_open(peer):
    peer.subscribe("chat")
    peer.send(f"joined channel {peer.context['channel']} ({len(peer.peers)} here)")
    peer.publish("chat", f"[system] {peer} joined")


def on_message(peer, message):
    peer.publish("chat", f"[{peer}] {message}")  # only this channel's subscribers
    peer.send(message)  # echo to the sender


app.get("/_ws", define_websocket_handler(upgrade=upgrade, open=on_open, message=on_message))

PAGE = """<!doctype html>
<meta charset="utf-8"><title>syncws channels</title>
<h1>Channel <span id="name"></span></h1>
<p>Add <code>?channel=NAME</code> to this page's URL to pick another channel.</p>
<form id="form"><input id="text" autocomplete="off" placeholder="message"> <button>Send</button></form>
<ul id="log"></ul>
<script>
const channel = new URLSearchParams(location.search).get("channel") || "general";
document.getElementById("name").textContent = channel;
const log = (text) => { const li = document.createElement("li"); li.textContent = text; document.getElementById("log").append(li); };
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host
                         + "/_ws?channel=" + encodeURIComponent(channel));
ws.onmessage = (event) => log(event.data);
ws.onclose = (event) => log("closed (" + event.code + ")");
document.getElementById("form").onsubmit = (e) => {
  e.preventDefault();
  const input = document.getElementById("text");
  if (ws.readyState === WebSocket.OPEN && input.value) { ws.send(input.value); input.value = ""; }
};
</script>
"""

app.get("/", lambda request: PAGE)

if __name__ == "__main__":
    from _common import run  # examples/ is on sys.path when this file is run as a script

    run(app, "channels: open {url}/?channel=a and {url}/?channel=b")
