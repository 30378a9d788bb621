# Run:  python examples/channels_chat.py   (ws://127.0.0.1:3000/_syncws; set PORT=8000 for another port)
#   or: python -m syncws examples.channels_chat:app --port 3000 --history-size 100
"""A chat with private rooms on the channels protocol (docs/channels.md).

* Log in: ``GET /token?user=alice`` gives a token good for ``TOKEN_SECONDS``
  (a real app issues it from its own login, see docs/how-to/tokens.md).
* A user may only join the rooms they belong to (``ROOMS``); members publish
  to them, and see who else is there, with join/leave events.
* The RPC ``history`` returns a room's last messages; ``kick`` (admins only)
  disconnects a user from every connection, on every process.
* Tokens expire: the client is asked for a new one and keeps its connection.

Try it with the Python client (``pip install 'syncws[client]'``)::

    from syncws.client import Client
    token = lambda: requests.get("http://127.0.0.1:3000/token?user=alice").text
    alice = Client("ws://127.0.0.1:3000/_syncws", get_token=token)
    room = alice.subscribe("general", presence_events=True, on_presence=print)
    alice.publish("general", {"text": "hello"})
    print(room.get(), alice.rpc("history", {"room": "general"}))
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time

from syncws import App, Channels, Refused, RPCError, serve

#: Room -> its members.
ROOMS = {"general": {"alice", "bob", "carol"}, "staff": {"alice", "carol"}}
ADMINS = {"alice"}
TOKEN_SECONDS = 600.0
SECRET = os.environ.get("CHAT_SECRET", "").encode() or secrets.token_bytes(32)


def make_token(user: str, seconds: float = TOKEN_SECONDS) -> str:
    """``user:expiry`` signed with the app's secret (a JWT does the same job)."""
    body = f"{user}:{time.time() + seconds:.0f}".encode()
    signature = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    return base64.urlsafe_b64encode(body).decode() + "." + signature


def check_token(token: str | None) -> tuple[str, float]:
    """The token's user and its seconds left; :class:`Refused` when it is forged or stale."""
    try:
        encoded, signature = (token or "").split(".")
        body = base64.urlsafe_b64decode(encoded)
    except ValueError:
        raise Refused("malformed token") from None
    if not hmac.compare_digest(hmac.new(SECRET, body, hashlib.sha256).hexdigest(), signature):
        raise Refused("bad signature")
    user, _, expiry = body.decode().partition(":")
    left = float(expiry) - time.time()
    if left <= 0:
        raise Refused("token expired")
    return user, left


def connect(request, token):
    user, left = check_token(token)
    return {"user": user, "info": {"name": user.title(), "admin": user in ADMINS}, "expires_in": left}


def authorize(peer, action, topic):
    if peer.user not in ROOMS.get(topic, ()):
        raise Refused(f"{peer.user} is not a member of {topic}")
    return True  # members subscribe, publish, read presence and history


chat = Channels(connect=connect, authorize=authorize)


@chat.rpc("history")
def history(peer, params):
    room = params.get("room") if isinstance(params, dict) else None
    if peer.user not in ROOMS.get(room, ()):
        raise RPCError("forbidden", "not your room")
    return [entry.data for entry in peer.server.history(room, peer.namespace, limit=20)]


@chat.rpc("kick")
def kick(peer, params):
    if peer.user not in ADMINS:
        raise RPCError("forbidden", "admins only")
    peer.server.disconnect(user=params["user"], reason=f"kicked by {peer.user}")
    return True


app = App()
app.get("/_syncws", chat)


@app.get("/token")
def token(request):
    user = request.args.get("user", "")
    if not any(user in members for members in ROOMS.values()):
        return "unknown user", 403
    return make_token(user)


if __name__ == "__main__":
    serve(app, port=int(os.environ.get("PORT", "3000")), history_size=100)
