"""A channels endpoint the client tests serve in subprocesses (``python -m syncws``) with Redis.

The token is the user id; every action is allowed; the RPC ``ban`` disconnects
the user it names on every process (``server.disconnect``), ``kick`` removes
it from a topic (``server.unsubscribe``).  ``/stats`` says whether the broker
is connected.  ``/`` is a page that loads ``/syncws.js`` for the browser tests.
"""

from __future__ import annotations

from syncws import App, Channels, client_js, current_server

#: A page that loads syncws.js (the browser tests drive ``window.syncws``).
PAGE = """<!doctype html><title>syncws.js</title>
<script type="module">import * as syncws from "/syncws.js"; window.syncws = syncws;</script>"""

channels = Channels(connect=lambda request, token: {"user": token}, authorize=lambda peer, action, topic: True)


@channels.rpc("ban")
def ban(peer, params):
    peer.server.disconnect(user=params["user"], reason="banned")
    return True


@channels.rpc("kick")
def kick(peer, params):
    peer.server.unsubscribe(params["user"], params["topic"])
    return True


def stats(request):
    return {"connected": getattr(current_server().broker, "connected", True), "peers": len(current_server().peers)}


app = App()
app.get("/_syncws", channels)
app.get("/stats", stats)
app.get("/syncws.js", client_js)
app.get("/", lambda request: PAGE)
