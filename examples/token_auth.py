# Run:  python examples/token_auth.py      (http://127.0.0.1:3000; set PORT=8000 for another port)
#   or: python -m syncws examples.token_auth:app --port 3000
"""Authenticate a WebSocket in the ``upgrade`` hook, before any 101 is sent.

The client passes a token in the query string (browsers cannot set headers on
``new WebSocket(...)``; a non-browser client may send ``Authorization: Bearer
<token>`` instead).  A known token is accepted and its user id lands in
``peer.context["user_id"]``; anything else is refused with 401 and the
connection never opens.  Try ``ws://127.0.0.1:3000/_ws?token=alice-token``.
"""

from werkzeug.wrappers import Response

from syncws import App, define_websocket_handler

app = App()

#: token -> user id; a real app looks the token up in its session store or verifies a JWT.
TOKENS = {"alice-token": "alice", "bob-token": "bob"}


def token_of(request):
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer ") :].strip()
    return request.args.get("token", "")


def upgrade(request):
    user_id = TOKENS.get(token_of(request))
    if user_id is None:
        # Refuse: this response is the HTTP answer, no 101 is ever sent
        return Response("Unauthorized", status=401, headers={"WWW-Authenticate": "Bearer"})
    return {"context": {"user_id": user_id}}


def on_open(peer):
    peer.subscribe("chat")
    peer.send(f"Welcome, {peer.context['user_id']}!")
    peer.publish("chat", f"[system] {peer.context['user_id']} joined")


def on_message(peer, message):
    peer.publish("chat", f"{peer.context['user_id']}: {message}")
    peer.send(f"you: {message}")


app.get("/_ws", define_websocket_handler(upgrade=upgrade, open=on_open, message=on_message))

PAGE = """<!doctype html>
<meta charset="utf-8"><title>syncws token auth</title>
<h1>Token auth</h1>
<p>Tokens: <code>alice-token</code>, <code>bob-token</code>; anything else is refused with 401.</p>
<form id="connect"><input id="token" value="alice-token"> <button>Connect</button></form>
<form id="send"><input id="text" autocomplete="off" placeholder="message"> <button>Send</button></form>
<ul id="log"></ul>
<script>
let ws = null;
const log = (text) => { const li = document.createElement("li"); li.textContent = text; document.getElementById("log").append(li); };
document.getElementById("connect").onsubmit = (e) => {
  e.preventDefault();
  if (ws) ws.close();
  const token = encodeURIComponent(document.getElementById("token").value);
  ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/_ws?token=" + token);
  ws.onopen = () => log("connected");
  ws.onmessage = (event) => log(event.data);
  ws.onclose = (event) => log("closed (" + event.code + "; a refused token never opens)");
};
document.getElementById("send").onsubmit = (e) => {
  e.preventDefault();
  const input = document.getElementById("text");
  if (ws && ws.readyState === WebSocket.OPEN && input.value) { ws.send(input.value); input.value = ""; }
};
</script>
"""

app.get("/", lambda request: PAGE)

if __name__ == "__main__":
    from _common import run  # examples/ is on sys.path when this file is run as a script

    run(app, "token auth: open {url}/ (tokens: alice-token, bob-token)")
