# Run:  python examples/flask_login.py     (http://127.0.0.1:3000; set PORT=8000 for another port)
#   or: python -m syncws examples.flask_login:app --port 3000
"""A Flask app whose WebSocket needs a logged-in user (Flask's session cookie).

``/login`` is a form (any name, the password is "secret"); it stores the user
in Flask's signed session cookie.  The WebSocket view ``/ws`` is protected by
the same ``login_required`` decorator as any other view: without a session the
upgrade is refused with 401 and no 101 is ever sent, so the browser's
``WebSocket`` fails to open.  The hooks run inside the request, so ``g.user``
and ``session`` are available to them.
"""

import functools
import os

from flask import Flask, abort, g, redirect, render_template_string, request, session, url_for

from syncws import define_websocket_handler

app = Flask(__name__)
# A fixed key for the demo; a real app reads it from its configuration.
app.secret_key = os.environ.get("SECRET_KEY", "dev-only-secret-change-me")
PASSWORD = "secret"


@app.before_request
def load_user():
    g.user = session.get("user")


def login_required(view):
    """Refuse anonymous requests: 401 for a WebSocket upgrade or an API call, else the login page."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if g.user is None:
            if request.headers.get("Upgrade", "").lower() == "websocket":
                abort(401)
            return redirect(url_for("login", next=request.path))
        return view(*args, **kwargs)

    return wrapped


def on_open(peer):
    peer.subscribe("chat")
    peer.send(f"Welcome, {g.user}!")
    peer.publish("chat", f"[system] {g.user} joined")


def on_message(peer, message):
    peer.publish("chat", f"{g.user}: {message}")
    peer.send(f"you: {message}")


chat = define_websocket_handler(open=on_open, message=on_message)


@app.get("/ws")
@login_required
def ws():
    return chat


LOGIN_PAGE = """<!doctype html>
<meta charset="utf-8"><title>log in</title>
<h1>Log in</h1>
{% if error %}<p style="color:#b91c1c">{{ error }}</p>{% endif %}
<form method="post">
  <input name="user" placeholder="name" required autofocus>
  <input name="password" type="password" placeholder="password (secret)" required>
  <button>Log in</button>
</form>
"""

CHAT_PAGE = """<!doctype html>
<meta charset="utf-8"><title>chat</title>
<p>Logged in as <b>{{ user }}</b> · <form method="post" action="{{ url_for('logout') }}" style="display:inline"><button>Log out</button></form></p>
<form id="form"><input id="text" autocomplete="off" placeholder="message"> <button>Send</button></form>
<ul id="log"></ul>
<script>
const log = (text) => { const li = document.createElement("li"); li.textContent = text; document.getElementById("log").append(li); };
// The session cookie goes along with the upgrade request, like with any request.
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
ws.onmessage = (event) => log(event.data);
ws.onclose = (event) => log("closed (" + event.code + ")");
document.getElementById("form").onsubmit = (e) => {
  e.preventDefault();
  const input = document.getElementById("text");
  if (ws.readyState === WebSocket.OPEN && input.value) { ws.send(input.value); input.value = ""; }
};
</script>
"""


@app.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST":
        user = request.form.get("user", "").strip()
        if user and request.form.get("password") == PASSWORD:
            session["user"] = user
            target = request.args.get("next", "/")
            return redirect(target if target.startswith("/") and not target.startswith("//") else "/")
        error = "wrong name or password"
    return render_template_string(LOGIN_PAGE, error=error), 401 if error else 200


@app.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("login"))


@app.get("/")
@login_required
def index():
    return render_template_string(CHAT_PAGE, user=g.user)


if __name__ == "__main__":
    from _common import run  # examples/ is on sys.path when this file is run as a script

    run(app, "flask login: open {url}/ (any name, password 'secret')")
