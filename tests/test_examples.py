"""Every example's app, served for real (start_server) and driven over real sockets."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import websocket

from .conftest import connect, wait_until, ws_url
from .support import assert_nothing_received

pytestmark = pytest.mark.slow  # subprocesses, browsers, Redis or load: not in the fast loop

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def handshake_status(url: str, **kwargs) -> int:
    """The HTTP status a refused upgrade gets (websocket-client raises with it)."""
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url, timeout=5, **kwargs)
    return refused.value.status_code


@pytest.mark.parametrize(
    "name", ["chat", "sse", "flask_login", "token_auth", "rooms", "channel", "feed", "channels_chat"]
)
def test_each_example_says_how_to_run_it_and_imports(name):
    source = (EXAMPLES / f"{name}.py").read_text()
    first, second = source.splitlines()[:2]
    assert first.startswith(f"# Run:  python examples/{name}.py")
    assert f"python -m syncws examples.{name}:app" in second
    result = subprocess.run(
        [sys.executable, "-c", f"import examples.{name} as m; assert callable(m.app)"],
        cwd=EXAMPLES.parent,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_nginx_snippet_proxies_websockets_and_sse():
    conf = (EXAMPLES / "deploy" / "nginx.conf").read_text()
    for directive in (
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_buffering off;",
        "proxy_read_timeout",
    ):
        assert directive in conf
    assert conf.count("{") == conf.count("}")
    # Every proxied location overwrites what syncws reads (X-Forwarded-For) and
    # clears the header it does not: nothing a client sends decides its address.
    proxied = conf.count("proxy_pass ")
    assert conf.count("proxy_set_header X-Forwarded-For $remote_addr;") == proxied
    assert conf.count('proxy_set_header Forwarded "";') == proxied


# -- flask_login ---------------------------------------------------------------------------


def test_flask_login_protects_the_websocket(start_server):
    from examples import flask_login as example

    server = start_server(example.app)
    base = server.url
    url = ws_url(server, "/ws")

    # Anonymous: the upgrade is refused with 401, pages redirect to the login form
    assert handshake_status(url) == 401
    page = requests.get(base + "/", timeout=5, allow_redirects=False)
    assert page.status_code == 302 and "/login" in page.headers["Location"]

    # A wrong password does not log in
    browser = requests.Session()
    refused = browser.post(base + "/login", data={"user": "alice", "password": "nope"}, timeout=5)
    assert refused.status_code == 401 and "wrong name or password" in refused.text
    assert "session" not in browser.cookies

    # Log in through the form: the session cookie opens the WebSocket
    page = browser.post(base + "/login", data={"user": "alice", "password": "secret"}, timeout=5)
    assert page.status_code == 200 and "Logged in as <b>alice</b>" in page.text
    cookie = "; ".join(f"{name}={value}" for name, value in browser.cookies.items())
    alice = websocket.create_connection(url, timeout=5, cookie=cookie)
    assert alice.recv() == "Welcome, alice!"

    bob_session = requests.Session()
    bob_session.post(base + "/login", data={"user": "bob", "password": "secret"}, timeout=5)
    bob_cookie = "; ".join(f"{name}={value}" for name, value in bob_session.cookies.items())
    bob = websocket.create_connection(url, timeout=5, cookie=bob_cookie)
    assert bob.recv() == "Welcome, bob!"
    assert alice.recv() == "[system] bob joined"

    bob.send("hi alice")
    assert bob.recv() == "you: hi alice"
    assert alice.recv() == "bob: hi alice"

    # A forged cookie is no login
    assert handshake_status(url, cookie="session=forged") == 401

    # After logout the same browser is anonymous again
    browser.post(base + "/logout", timeout=5)
    cookie = "; ".join(f"{name}={value}" for name, value in browser.cookies.items())
    assert handshake_status(url, cookie=cookie) == 401
    alice.close()
    bob.close()


# -- token_auth ----------------------------------------------------------------------------


def test_token_auth_accepts_known_tokens_and_refuses_others(start_server):
    from examples import token_auth as example

    server = start_server(example.app)
    assert "alice-token" in requests.get(server.url + "/", timeout=5).text

    alice = connect(server, "/_ws?token=alice-token", timeout=5)
    assert alice.recv() == "Welcome, alice!"
    bob = connect(server, "/_ws", timeout=5, header=["Authorization: Bearer bob-token"])
    assert bob.recv() == "Welcome, bob!"
    assert alice.recv() == "[system] bob joined"
    alice.send("hello")
    assert alice.recv() == "you: hello"
    assert bob.recv() == "alice: hello"

    for query, headers in (("", []), ("?token=wrong", []), ("", ["Authorization: Bearer nope"])):
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            connect(server, "/_ws" + query, timeout=5, header=headers)
        assert refused.value.status_code == 401
        assert refused.value.resp_headers.get("www-authenticate") == "Bearer"
    assert_nothing_received(alice)
    assert {peer.context.get("user_id") for peer in server.peers} == {"alice", "bob"}
    alice.close()
    bob.close()


# -- rooms -----------------------------------------------------------------------------------


def test_rooms_are_isolated(start_server):
    from examples import rooms as example

    server = start_server(example.app)
    lobby_page = requests.get(server.url + "/rooms/lobby", timeout=5)
    assert lobby_page.status_code == 200 and "Room lobby" in lobby_page.text
    assert requests.get(server.url + "/rooms/Bad_Name", timeout=5).status_code == 404
    assert "no one is chatting" in requests.get(server.url + "/", timeout=5).text

    ann = connect(server, "/rooms/lobby/ws", timeout=5)
    assert ann.recv().startswith("[system] welcome to lobby; here: nobody yet")
    ben = connect(server, "/rooms/lobby/ws", timeout=5)
    assert ben.recv().startswith("[system] welcome to lobby; here: ")
    assert ann.recv().endswith(" joined")
    gus = connect(server, "/rooms/games/ws", timeout=5)
    assert gus.recv() == "[system] welcome to games; here: nobody yet"

    ann.send("lobby news")
    assert ann.recv() == "[you] lobby news"
    assert re.fullmatch(r"\[.+\] lobby news", ben.recv())
    gus.send("games news")
    assert gus.recv() == "[you] games news"
    assert_nothing_received(ann)
    assert_nothing_received(ben)

    assert requests.get(server.url + "/rooms.json", timeout=5).json() == {"games": 1, "lobby": 2}
    index = requests.get(server.url + "/", timeout=5).text
    assert 'href="/rooms/lobby"' in index and "(2)" in index

    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(server, "/rooms/NOPE/ws", timeout=5)
    assert refused.value.status_code == 404

    ben.close()
    assert ann.recv().endswith(" left")
    for client in (ann, gus):
        client.close()


# -- channel ---------------------------------------------------------------------------------


def test_channels_are_isolated(start_server):
    from examples import channel as example

    server = start_server(example.app)
    assert "?channel=" in requests.get(server.url + "/", timeout=5).text

    a1 = connect(server, "/_ws?channel=a", timeout=5)
    assert a1.recv() == "joined channel a (1 here)"
    a2 = connect(server, "/_ws?channel=a", timeout=5)
    assert a2.recv() == "joined channel a (2 here)"
    assert a1.recv().endswith(" joined")
    b1 = connect(server, "/_ws?channel=b", timeout=5)
    assert b1.recv() == "joined channel b (1 here)"
    general = connect(server, "/_ws", timeout=5)
    assert general.recv() == "joined channel general (1 here)"

    a1.send("for a")
    assert a1.recv() == "for a"
    assert a2.recv().endswith("] for a")
    b1.send("for b")
    assert b1.recv() == "for b"
    for client in (a1, a2, general):
        assert_nothing_received(client)
    assert_nothing_received(b1)
    assert {peer.namespace for peer in server.peers} == {"chat:a", "chat:b", "chat:general"}

    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(server, "/_ws?channel=../../etc", timeout=5)
    assert refused.value.status_code == 400
    for client in (a1, a2, b1, general):
        client.close()


# -- chat and sse (the examples that were there before) ---------------------------------------


def test_channels_chat_private_rooms_history_presence_and_kick(start_server, clients):
    from examples import channels_chat as example
    from syncws.base.errors import ClientClosed, RequestFailed

    server = start_server(example.app, history_size=100)
    url = ws_url(server, "/_syncws")

    def token(user):
        answer = requests.get(server.url + "/token", params={"user": user}, timeout=5)
        assert answer.status_code == 200
        return answer.text

    assert requests.get(server.url + "/token", params={"user": "mallory"}, timeout=5).status_code == 403
    events: list = []
    alice = clients(url, get_token=lambda: token("alice"))
    general = alice.subscribe("general", presence_events=True, on_presence=events.append)
    staff = alice.subscribe("staff")
    bob = clients(url, get_token=lambda: token("bob"))
    with pytest.raises(RequestFailed, match="bob is not a member of staff"):
        bob.subscribe("staff")
    bobs = bob.subscribe("general")
    bob.publish("general", {"text": "hi all"})
    assert general.get(5).data == bobs.get(5).data == {"text": "hi all"}
    alice.publish("staff", {"text": "staff only"})
    assert staff.get(5).data == {"text": "staff only"}
    assert bob.rpc("history", {"room": "general"}) == [{"text": "hi all"}]
    with pytest.raises(RequestFailed, match="forbidden"):
        bob.rpc("history", {"room": "staff"})
    assert sorted(m["user"] for m in alice.presence("general")) == ["alice", "bob"]
    assert wait_until(lambda: [(e["type"], e["user"]) for e in events] == [("join", "alice"), ("join", "bob")])
    with pytest.raises(RequestFailed, match="admins only"):
        bob.rpc("kick", {"user": "alice"})
    assert alice.rpc("kick", {"user": "bob"}) is True
    assert wait_until(lambda: bob.closed)
    assert (bob.close_code, bob.close_reason) == (4003, "kicked by alice")
    assert wait_until(lambda: events[-1]["type"] == "leave" and events[-1]["user"] == "bob")
    good = example.make_token("alice")
    forged = clients(url, token=good[:-1] + ("0" if good[-1] != "0" else "1"))
    with pytest.raises(ClientClosed, match="bad signature"):
        forged.wait_connected(5)
    stale = clients(url, token=example.make_token("alice", seconds=-1))
    with pytest.raises(ClientClosed, match="token expired"):
        stale.wait_connected(5)


def test_chat_example_over_real_sockets(start_server, clients):
    from examples import chat as example
    from syncws.base.errors import ClientClosed, RequestFailed

    server = start_server(example.app)
    assert "syncws chat" in requests.get(server.url + "/", timeout=5).text
    assert requests.get(server.url + "/syncws.js", timeout=5).headers["Content-Type"].startswith("text/javascript")
    url = ws_url(server, "/_ws")
    welcome, events = [], []
    one = clients(url, token="one", on_message=welcome.append)
    room = one.subscribe("chat", presence_events=True, on_presence=events.append)
    two = clients(url, token="two")
    their_room = two.subscribe("chat")
    assert wait_until(lambda: [e["user"] for e in events] == ["one", "two"])
    assert welcome == ["Welcome to the server!"]
    assert one.rpc("ping") == "pong"
    assert one.rpc("say", "hello") is True
    assert room.get(5).data == their_room.get(5).data == {"from": "one", "text": "hello"}
    with pytest.raises(RequestFailed, match="forbidden"):
        two.publish("chat", {"from": "one", "text": "forged"})  # only the server speaks for a user
    two.close()
    assert wait_until(lambda: events[-1]["type"] == "leave" and events[-1]["user"] == "two")
    nameless = clients(url, token="no spaces allowed")
    with pytest.raises(ClientClosed, match="4001"):
        nameless.wait_connected(5)


def test_the_kubernetes_manifest_names_real_options_and_drains_within_its_grace_period():
    import yaml

    from syncws.base.options import BY_NAME, from_environ

    deployment, service, admin_service = yaml.safe_load_all((EXAMPLES / "deploy" / "kubernetes.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    variables = {entry["name"]: entry.get("value", "from a secret") for entry in container["env"]}
    options = from_environ(variables)
    assert set(variables) == {BY_NAME[name].env_var for name in options}  # every variable is an option
    health = options["health_path"]
    assert container["readinessProbe"]["httpGet"]["path"] == health + "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == health + "/live"
    # The drain fits in the grace period, and readiness fails before anyone is refused.
    drain = options["drain_delay"] + options["drain_period"] + options["shutdown_timeout"]
    assert drain < pod["terminationGracePeriodSeconds"]
    probe = container["readinessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] <= options["drain_delay"]
    assert admin_service["spec"]["ports"][0]["targetPort"] == int(options["admin"].rsplit(":", 1)[1])
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] == "http" and ports["http"] == 8000
    assert ports["metrics"] == int(options["metrics"].rsplit(":", 1)[1])
