# Run:  python examples/chat.py            (http://127.0.0.1:3000; set PORT=8000 for another port)
#   or: python -m syncws examples.chat:app --port 3000
"""A chat room on syncws channels: open http://127.0.0.1:3000 in two tabs.

The page uses ``syncws.js`` (docs/browser.md): it connects with a guest name as
its token, subscribes to the "chat" topic with join/leave events, and sends
with the RPC ``say``, which publishes the message under the sender's name
(clients may not publish themselves, so nobody can speak for someone else);
"ping" is an RPC answered with "pong".  If the connection drops, syncws.js
reconnects with back-off and gets what was said meanwhile.
"""

import re

from syncws import App, Channels, Refused, client_js

app = App()
NAME = re.compile(r"[A-Za-z0-9_-]{1,24}")


def connect(request, token):
    if not token or not NAME.fullmatch(token):
        raise Refused("a name is 1-24 letters, digits, _ or -")
    return {"user": token}


chat = Channels(
    connect=connect,
    authorize=lambda peer, action, topic: topic == "chat" and action != "publish",
    open=lambda peer: chat.send(peer, "Welcome to the server!"),
)


@chat.rpc("say")
def say(peer, text):
    if not isinstance(text, str) or not text.strip():
        return False
    peer.server.publish("chat", {"from": peer.user, "text": text[:2000]}, namespace=peer.namespace)
    return True


@chat.rpc("ping")
def ping(peer, params):
    return "pong"


app.get("/_ws", chat)
app.get("/syncws.js", client_js)


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>syncws chat</title>
<style>
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.4 system-ui, sans-serif; background: #f4f4f5; color: #18181b;
         display: flex; flex-direction: column; height: 100vh; }
  header { display: flex; align-items: center; gap: .75rem; padding: .6rem 1rem;
           background: #18181b; color: #fafafa; }
  header h1 { font-size: 1rem; margin: 0; flex: 1; }
  #state { font-size: .8rem; padding: .15rem .6rem; border-radius: 999px; background: #a1a1aa; }
  #state.open { background: #16a34a; }
  #state.connecting { background: #ca8a04; }
  #state.closed { background: #dc2626; }
  #log { flex: 1; overflow-y: auto; margin: 0; padding: .75rem 1rem; list-style: none; }
  #log li { margin: .2rem 0; padding: .35rem .6rem; border-radius: 6px; background: #fff;
            white-space: pre-wrap; word-break: break-word; }
  #log li.out { background: #dbeafe; }
  #log li.system { background: transparent; color: #71717a; font-style: italic; }
  #log time { color: #a1a1aa; font-size: .75rem; margin-right: .5rem; }
  form { display: flex; gap: .5rem; padding: .75rem 1rem; background: #e4e4e7; }
  input { flex: 1; padding: .5rem; font: inherit; border: 1px solid #a1a1aa; border-radius: 6px; }
  button { padding: .5rem .9rem; font: inherit; border: 0; border-radius: 6px;
           background: #2563eb; color: #fff; cursor: pointer; }
  button[type=button] { background: #52525b; }
  button:disabled { opacity: .5; cursor: default; }
</style>
</head>
<body>
<header><h1>syncws chat</h1><span id="state">idle</span></header>
<ul id="log"></ul>
<form id="form">
  <input id="input" autocomplete="off" placeholder="Type a message and press Enter" autofocus>
  <button id="send" type="submit">Send</button>
  <button id="ping" type="button">ping</button>
</form>
<script type="module">
import { connect } from "/syncws.js";

const log = document.getElementById("log");
const state = document.getElementById("state");
const input = document.getElementById("input");
const buttons = [document.getElementById("send"), document.getElementById("ping")];
const name = "guest-" + Math.random().toString(36).slice(2, 6);

function show(text, kind) {
  const item = document.createElement("li");
  if (kind) item.className = kind;
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString();
  item.append(time, text);
  log.append(item);
  log.scrollTop = log.scrollHeight;
}

function setState(label, kind) {
  state.textContent = label;
  state.className = kind;
  buttons.forEach((b) => { b.disabled = kind !== "open"; });
}

const client = connect((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/_ws", { token: name });
client.addEventListener("connecting", () => setState("connecting", "connecting"));
client.addEventListener("connected", () => { setState("open", "open"); show("connected as " + name, "system"); });
client.addEventListener("disconnected", (event) => {
  const { code, willRetry, delay } = event.detail;
  setState("closed", "closed");
  show(`disconnected (code ${code})` + (willRetry ? `, reconnecting in ${((delay ?? 0) / 1000).toFixed(1)} s` : ""), "system");
});
client.addEventListener("message", (event) => show(String(event.detail)));  // the welcome
client.subscribe("chat", {
  presenceEvents: true,
  onMessage: (message) => show(`[${message.from}] ${message.text}`),
  onPresence: (event) => show(`[system] ${event.user} ${event.type === "join" ? "joined!" : "has left the chat!"}`, "system"),
});

function send(text) {
  if (!text || !client.connected) return;
  show("> " + text, "out");
  if (text === "ping") client.rpc("ping").then((answer) => show(String(answer)));
  else client.rpc("say", text);
}

document.getElementById("form").addEventListener("submit", (event) => {  // the Send button and Enter
  event.preventDefault();
  send(input.value.trim());
  input.value = "";
  input.focus();
});
document.getElementById("ping").addEventListener("click", () => send("ping"));
</script>
</body>
</html>
"""


app.get("/", lambda request: PAGE)

if __name__ == "__main__":
    from _common import run  # examples/ is on sys.path when this file is run as a script

    run(app, "chat: open {url}/ in two browser tabs")
