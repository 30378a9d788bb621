# Run:  python examples/chat.py            (http://127.0.0.1:3000; set PORT=8000 for another port)
#   or: python -m syncws examples.chat:app --port 3000
"""A chat room on syncws, in the style of CrossWS's demo: open http://127.0.0.1:3000 in two tabs.

Every client subscribes to the "chat" topic.  A message is published to the
other members and echoed back to its sender; "ping" is answered with "pong".
"""

from syncws import App, define_websocket_handler

app = App()


def on_open(peer):
    # Send welcome to the new client
    peer.send("Welcome to the server!")
    # Join new client to the "chat" channel
    peer.subscribe("chat")
    # Notify every other connected client
    peer.publish("chat", f"[system] {peer} joined!")


def on_message(peer, message):
    if message.text() == "ping":
        # Reply to the client with a ping response
        peer.send("pong")
        return
    # The server re-broadcasts incoming messages to everyone else
    peer.publish("chat", f"[{peer}] {message}")
    # Echo the message back to the sender
    peer.send(message)


def on_close(peer, details):
    peer.publish("chat", f"[system] {peer} has left the chat!")
    peer.unsubscribe("chat")


app.get("/_ws", define_websocket_handler(open=on_open, message=on_message, close=on_close))


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
<script>
(() => {
  const log = document.getElementById("log");
  const state = document.getElementById("state");
  const form = document.getElementById("form");
  const input = document.getElementById("input");
  const buttons = [document.getElementById("send"), document.getElementById("ping")];
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/_ws";
  let ws = null;
  let retry = 0;

  function show(text, kind) {
    const item = document.createElement("li");
    if (kind) item.className = kind;
    const time = document.createElement("time");
    time.textContent = new Date().toLocaleTimeString();
    item.append(time, text);
    log.append(item);
    log.scrollTop = log.scrollHeight;
  }

  function setState(name) {
    state.textContent = name;
    state.className = name;
    buttons.forEach((b) => { b.disabled = name !== "open"; });
  }

  function connect() {
    setState("connecting");
    ws = new WebSocket(url);
    ws.onopen = () => { retry = 0; setState("open"); show("connected to " + url, "system"); };
    ws.onmessage = (event) => {
      const text = String(event.data);
      show(text, text.startsWith("[system]") ? "system" : "");
    };
    ws.onclose = (event) => {
      setState("closed");
      const delay = Math.min(10000, 500 * 2 ** retry++);
      show("disconnected (code " + event.code + "), reconnecting in " + delay / 1000 + " s", "system");
      setTimeout(connect, delay);
    };
  }

  function send(text) {
    if (!text || !ws || ws.readyState !== WebSocket.OPEN) return;
    ws.send(text);
    show("> " + text, "out");
  }

  form.addEventListener("submit", (event) => {  // the Send button and Enter
    event.preventDefault();
    send(input.value.trim());
    input.value = "";
    input.focus();
  });
  document.getElementById("ping").addEventListener("click", () => send("ping"));
  connect();
})();
</script>
</body>
</html>
"""


app.get("/", lambda request: PAGE)

if __name__ == "__main__":
    from _common import run  # examples/ is on sys.path when this file is run as a script

    run(app, "chat: open {url}/ in two browser tabs")
