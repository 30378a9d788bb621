# Run:  python examples/rooms.py           (http://127.0.0.1:3000; set PORT=8000 for another port)
#   or: python -m syncws examples.rooms:app --port 3000
"""Chat rooms from a dynamic route: ``/rooms/<room>`` is one namespace per room.

The WebSocket handler is mounted on ``/rooms/<room>/ws``; a peer's namespace is
its request path, so ``/rooms/lobby/ws`` and ``/rooms/games/ws`` never see each
other's messages.  ``GET /rooms/<room>`` is the room's page, ``GET /`` lists the
rooms that have someone in them (from the live server's peers).
"""

import html
import re

from werkzeug.exceptions import abort

from syncws import App, current_server, define_websocket_handler

app = App()

ROOM = re.compile(r"[a-z0-9-]{1,32}")


def upgrade(request):
    room = request.view_args["room"]
    if not ROOM.fullmatch(room):
        abort(404)
    return {"context": {"room": room}}  # namespace stays "/rooms/<room>/ws"


def on_open(peer):
    peer.subscribe("room")
    names = ", ".join(str(other) for other in peer.peers if other is not peer) or "nobody yet"
    peer.send(f"[system] welcome to {peer.context['room']}; here: {names}")
    peer.publish("room", f"[system] {peer} joined")


def on_message(peer, message):
    peer.publish("room", f"[{peer}] {message}")  # this room only
    peer.send(f"[you] {message}")


def on_close(peer, details):
    peer.publish("room", f"[system] {peer} left")


app.get("/rooms/<room>/ws", define_websocket_handler(upgrade=upgrade, open=on_open, message=on_message, close=on_close))


def occupied_rooms():
    try:
        peers = current_server().peers
    except RuntimeError:  # imported without a running server
        return {}
    counts = {}
    for peer in peers:
        room = peer.context.get("room")
        if room:
            counts[room] = counts.get(room, 0) + 1
    return dict(sorted(counts.items()))


@app.get("/")
def index(request):
    items = (
        "".join(
            f'<li><a href="/rooms/{html.escape(room)}">{html.escape(room)}</a> ({count})</li>'
            for room, count in occupied_rooms().items()
        )
        or "<li>no one is chatting</li>"
    )
    return (
        '<!doctype html><meta charset="utf-8"><title>syncws rooms</title><h1>Rooms</h1>'
        f"<ul>{items}</ul>"
        "<form onsubmit=\"location.href='/rooms/'+encodeURIComponent(this.room.value);return false\">"
        '<input name="room" pattern="[a-z0-9-]{1,32}" placeholder="room name" required> <button>Join</button></form>'
    )


@app.get("/rooms.json")
def rooms_json(request):
    return occupied_rooms()


ROOM_PAGE = """<!doctype html>
<meta charset="utf-8"><title>room {room}</title>
<p><a href="/">all rooms</a></p>
<h1>Room {room}</h1>
<form id="form"><input id="text" autocomplete="off" placeholder="message"> <button>Send</button></form>
<ul id="log"></ul>
<script>
const log = (text) => {{ const li = document.createElement("li"); li.textContent = text; document.getElementById("log").append(li); }};
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + location.pathname + "/ws");
ws.onmessage = (event) => log(event.data);
ws.onclose = (event) => log("closed (" + event.code + ")");
document.getElementById("form").onsubmit = (e) => {{
  e.preventDefault();
  const input = document.getElementById("text");
  if (ws.readyState === WebSocket.OPEN && input.value) {{ ws.send(input.value); input.value = ""; }}
}};
</script>
"""


@app.get("/rooms/<room>")
def room_page(request, room):
    if not ROOM.fullmatch(room):
        abort(404)
    return ROOM_PAGE.format(room=html.escape(room))


if __name__ == "__main__":
    from _common import run  # examples/ is on sys.path when this file is run as a script

    run(app, "rooms: open {url}/rooms/lobby and {url}/rooms/games")
