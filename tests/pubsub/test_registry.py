"""Topics and namespaces over real connections.

Absence of a message is proven with ordering, not with sleeps: each peer's
outbound stream is FIFO and a publish is fanned out in one go, so once a later
"marker" message has arrived, an earlier message that should not have come
would have arrived before it.
"""

from __future__ import annotations

import json
import queue
import threading

import pytest
import requests

import syncws
from syncws import App, define_websocket_handler

from ..conftest import connect, wait_until


def command_hooks(opened: list | None = None, **extra):
    """A tiny command protocol: JSON ``{"op": ..., ...}`` messages drive the peer."""

    def open_(peer):
        if opened is not None:
            opened.append(peer)

    def message(peer, msg):
        cmd = msg.json()
        op = cmd["op"]
        if op == "sub":
            peer.subscribe(cmd["topic"])
            peer.send({"ack": "sub", "topic": cmd["topic"]})
        elif op == "unsub":
            peer.unsubscribe(cmd["topic"])
            peer.send({"ack": "unsub", "topic": cmd["topic"]})
        elif op == "pub":
            peer.publish(cmd["topic"], cmd["data"])
            if cmd.get("ack", True):
                peer.send({"ack": "pub"})
        elif op == "server-pub":
            peer.server.publish(cmd["topic"], cmd["data"], namespace=cmd.get("namespace"))
            peer.send({"ack": "server-pub"})
        elif op == "ping":
            peer.send({"ack": "ping"})

    hooks = {"open": open_, "message": message}
    hooks.update(extra)
    return hooks


def do(client, **cmd):
    client.send(json.dumps(cmd))
    if cmd.get("ack", True):
        reply = json.loads(client.recv())
        assert reply["ack"] == cmd["op"], reply
        return reply


def join(server, n: int, path: str = "/rooms/x", topic: str | None = None) -> list:
    """``n`` connections to ``path``, each then subscribed to ``topic`` when one is given."""
    clients = [connect(server, path) for _ in range(n)]
    if topic is not None:
        for c in clients:
            do(c, op="sub", topic=topic)
    return clients


def published_to(sender, receiver, data: str, topic: str = "chat") -> None:
    """``sender`` publishes ``data`` on ``topic``; assert it is ``receiver``'s next message."""
    do(sender, op="pub", topic=topic, data=data)
    assert receiver.recv() == data


@pytest.fixture
def rooms(start_server):
    app = App()
    app.get("/rooms/<room>", define_websocket_handler(**command_hooks()))
    return start_server(app)


# -- namespaces --------------------------------------------------------------


def test_namespace_isolation_by_path(rooms):
    game_a, game_b = join(rooms, 2, "/rooms/game")
    lobby_a, lobby_b = join(rooms, 2, "/rooms/lobby")
    for c in (game_a, game_b, lobby_a, lobby_b):
        do(c, op="sub", topic="chat")

    published_to(lobby_a, lobby_b, "lobby says hi")
    # game_b's first message is the game publish: the lobby one never came.
    published_to(game_a, game_b, "game says hi")

    published_to(game_b, game_a, "game again")
    published_to(lobby_b, lobby_a, "lobby again")

    # And the other way: lobby_b's next message is lobby's, not game's.
    published_to(game_a, game_b, "game 3")
    published_to(lobby_a, lobby_b, "lobby 3")
    for c in (game_a, game_b, lobby_a, lobby_b):
        c.close()


def test_namespace_chosen_in_upgrade_from_query_parameter(start_server):
    namespaces: list = []

    def upgrade(request):
        channel = request.args.get("channel", "general")
        return {"namespace": f"chat:{channel}"}

    hooks = command_hooks()
    inner_open = hooks["open"]

    def open_(peer):
        namespaces.append(peer.namespace)
        inner_open(peer)

    hooks["open"] = open_
    app = App()
    app.get("/_ws", define_websocket_handler(upgrade=upgrade, **hooks))
    server = start_server(app)

    red = [connect(server, "/_ws?channel=red") for _ in range(2)]
    blue = [connect(server, "/_ws?channel=blue") for _ in range(2)]
    general = connect(server, "/_ws")
    for c in red + blue + [general]:
        do(c, op="sub", topic="chat")
    assert sorted(namespaces) == ["chat:blue", "chat:blue", "chat:general", "chat:red", "chat:red"]

    published_to(red[0], red[1], "red 1")
    published_to(blue[0], blue[1], "blue 1")
    # server.publish from a hook, limited to one namespace: the publisher is
    # subscribed, and a server publish (unlike peer.publish) includes it.
    general.send(json.dumps({"op": "server-pub", "topic": "chat", "data": "everyone", "namespace": "chat:general"}))
    assert general.recv() == "everyone"
    assert json.loads(general.recv()) == {"ack": "server-pub"}

    # Markers through every namespace: each peer's next message must be its marker.
    do(red[1], op="pub", topic="chat", data="red marker")
    do(blue[1], op="pub", topic="chat", data="blue marker")
    assert red[0].recv() == "red marker"
    assert blue[0].recv() == "blue marker"
    for c in red + blue + [general]:
        c.close()


def test_same_topic_name_in_two_namespaces_is_two_topics(rooms):
    a = connect(rooms, "/rooms/a")
    b = connect(rooms, "/rooms/b")
    do(a, op="sub", topic="news")
    do(b, op="sub", topic="news")
    registry = rooms.registry
    assert len(registry.subscribers("news", "/rooms/a")) == 1
    assert len(registry.subscribers("news", "/rooms/b")) == 1
    assert len(registry.subscribers("news")) == 2
    assert registry.counts() == {"peers": 2, "topics": 2, "subscribers": 2}
    a.close()
    b.close()
    assert wait_until(lambda: rooms.registry.counts() == {"peers": 0, "topics": 0, "subscribers": 0})


# -- peer.publish ------------------------------------------------------------


@pytest.mark.parametrize("sender_subscribed", [True, False], ids=["subscribed", "not-subscribed"])
def test_peer_publish_excludes_the_sender(rooms, sender_subscribed):
    sender = connect(rooms, "/rooms/x")
    others = join(rooms, 3, topic="t")
    if sender_subscribed:
        do(sender, op="sub", topic="t")

    # The hook publishes, then sends an ack to the sender: if the sender had
    # received its own publish, it would come before the ack.
    sender.send(json.dumps({"op": "pub", "topic": "t", "data": "from sender"}))
    assert json.loads(sender.recv()) == {"ack": "pub"}
    for c in others:
        assert c.recv() == "from sender"

    do(others[0], op="pub", topic="t", data="from other")
    if sender_subscribed:
        assert sender.recv() == "from other"
    for c in others[1:]:
        assert c.recv() == "from other"
    for c in [sender, *others]:
        c.close()


def test_publish_reaches_only_subscribers_of_that_topic(rooms):
    pub, a, b = join(rooms, 3)
    do(a, op="sub", topic="a")
    do(b, op="sub", topic="b")
    do(pub, op="pub", topic="a", data="for a")
    do(pub, op="pub", topic="b", data="for b")
    assert a.recv() == "for a"
    assert b.recv() == "for b"
    do(pub, op="pub", topic="nobody", data="lost")  # no subscriber: no error
    published_to(pub, a, "a2", topic="a")
    for c in (pub, a, b):
        c.close()


def test_unsubscribe_stops_delivery(rooms):
    pub, sub = join(rooms, 2)
    do(sub, op="sub", topic="t")
    do(sub, op="sub", topic="other")
    published_to(pub, sub, "one", topic="t")
    do(sub, op="unsub", topic="t")
    do(pub, op="pub", topic="t", data="two")
    published_to(pub, sub, "marker", topic="other")
    pub.close()
    sub.close()


def test_publish_order_is_preserved_per_subscriber(rooms):
    pub = connect(rooms, "/rooms/x")
    subs = join(rooms, 5, topic="t")
    for i in range(100):
        pub.send(json.dumps({"op": "pub", "topic": "t", "data": i, "ack": False}))
    for c in subs:
        assert [int(c.recv()) for _ in range(100)] == list(range(100))
    for c in [pub, *subs]:
        c.close()


def test_closed_peer_is_unsubscribed(rooms):
    pub = connect(rooms, "/rooms/x")
    gone, stay = join(rooms, 2, topic="t")
    assert len(rooms.registry.subscribers("t", "/rooms/x")) == 2
    gone.close()
    assert wait_until(lambda: len(rooms.registry.subscribers("t", "/rooms/x")) == 1)
    published_to(pub, stay, "after", topic="t")
    pub.close()
    stay.close()


# -- server.publish / syncws.publish -----------------------------------------


@pytest.fixture
def three_rooms(rooms):
    clients = {name: connect(rooms, f"/rooms/{name}") for name in ("game", "lobby", "hall")}
    for c in clients.values():
        do(c, op="sub", topic="news")
    yield rooms, clients
    for c in clients.values():
        c.close()


def test_server_publish_reaches_every_namespace(three_rooms):
    server, clients = three_rooms
    server.publish("news", "to all")
    for c in clients.values():
        assert c.recv() == "to all"
    server.publish("news", {"n": 1})
    for c in clients.values():
        assert c.recv() == '{"n":1}'


def test_server_publish_with_namespace_reaches_only_it(three_rooms):
    server, clients = three_rooms
    server.publish("news", "game only", namespace="/rooms/game")
    server.publish("news", "marker")
    assert clients["game"].recv() == "game only"
    assert clients["game"].recv() == "marker"
    assert clients["lobby"].recv() == "marker"
    assert clients["hall"].recv() == "marker"

    server.publish("news", "nowhere", namespace="/rooms/unknown")
    server.publish("news", "marker 2")
    for c in clients.values():
        assert c.recv() == "marker 2"


def test_module_level_publish_uses_the_running_server(three_rooms):
    server, clients = three_rooms
    assert syncws.current_server() is server
    syncws.publish("news", "via module")
    for c in clients.values():
        assert c.recv() == "via module"
    syncws.publish("news", b"\x01\x02", namespace="/rooms/lobby")
    opcode, data = clients["lobby"].recv_data()
    assert (opcode, data) == (2, b"\x01\x02")


def test_publish_from_a_plain_thread(three_rooms):
    server, clients = three_rooms
    errors: list = []

    def worker():
        try:
            for i in range(50):
                server.publish("news", f"thread {i}")
            syncws.publish("news", "module from thread", namespace="/rooms/hall")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker)]
    threads[0].start()
    threads[0].join(5)
    assert errors == []
    for c in clients.values():
        assert [c.recv() for _ in range(50)] == [f"thread {i}" for i in range(50)]
    assert clients["hall"].recv() == "module from thread"


def test_publish_from_many_threads_at_once(three_rooms):
    server, clients = three_rooms
    barrier = threading.Barrier(8)

    def worker(n):
        barrier.wait(5)
        for i in range(25):
            server.publish("news", f"{n}:{i}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for c in clients.values():
        got = [c.recv() for _ in range(200)]
        assert sorted(got) == sorted(f"{n}:{i}" for n in range(8) for i in range(25))
        # Each thread's own messages keep their order.
        for n in range(8):
            mine = [int(m.split(":")[1]) for m in got if m.startswith(f"{n}:")]
            assert mine == list(range(25))


def test_publish_from_a_hook_of_another_route_reaches_subscribers(start_server):
    """server.publish inside a hook (the hub thread) delivers at once."""
    app = App()
    app.get("/listen", define_websocket_handler(open=lambda peer: (peer.subscribe("feed"), peer.send("ready"))))
    app.get(
        "/speak",
        define_websocket_handler(message=lambda peer, msg: peer.server.publish("feed", f"said {msg}")),
    )
    server = start_server(app)
    listener = connect(server, "/listen")
    assert listener.recv() == "ready"
    speaker = connect(server, "/speak")
    speaker.send("hello")
    assert listener.recv() == "said hello"
    listener.close()
    speaker.close()


def test_publish_from_an_http_view(start_server):
    app = App()
    app.get("/_ws", define_websocket_handler(open=lambda peer: (peer.subscribe("alerts"), peer.send("ready"))))

    @app.post("/alert")
    def alert(request):
        syncws.publish("alerts", {"text": request.get_data(as_text=True)})
        return {"ok": True}

    server = start_server(app)
    client = connect(server)
    assert client.recv() == "ready"
    reply = requests.post(server.url + "/alert", data="fire", timeout=5)
    assert reply.json() == {"ok": True}
    assert client.recv() == '{"text":"fire"}'
    client.close()


def test_publish_after_stop_raises(start_server):
    app = App()
    app.get("/_ws", define_websocket_handler())
    server = start_server(app)
    server.stop(timeout=2)
    with pytest.raises(RuntimeError):
        server.publish("t", "x")


def test_subscribe_rejects_bad_topics(start_server):
    results: queue.Queue = queue.Queue()

    def message(peer, msg):
        topic = {"empty": "", "none": None, "int": 3}[msg.text()]
        try:
            peer.subscribe(topic)
        except (ValueError, TypeError) as exc:
            results.put(type(exc).__name__)
        else:
            results.put("accepted")
        peer.send("ok")

    app = App()
    app.get("/_ws", define_websocket_handler(message=message))
    server = start_server(app)
    client = connect(server)
    for name in ("empty", "none", "int"):
        client.send(name)
        assert client.recv() == "ok"
        assert results.get(timeout=5) in ("ConfigurationError", "TypeError")  # ConfigurationError is a ValueError
    assert server.registry.counts()["topics"] == 0
    client.close()


# -- presence bookkeeping ------------------------------------------------------------------


def test_presence_is_counted_without_walking_and_its_info_is_bounded(start_server):
    answers: queue.Queue = queue.Queue()

    def message(peer, message):
        request = message.json()
        try:
            if "sub" in request:
                info = request.get("info")
                peer.subscribe(request["sub"], presence={1, 2} if info == "a set" else info)
            else:
                peer.unsubscribe(request["unsub"])
            answers.put("ok")
        except Exception as exc:
            answers.put(f"{type(exc).__name__}: {exc}")

    app = App()
    app.get("/_ws", define_websocket_handler(message=message))
    server = start_server(app, max_presence_size=1000)
    client = connect(server, "/_ws")

    def ask(**request) -> str:
        client.send(json.dumps(request))
        return answers.get(timeout=5)

    def count() -> int:
        return server.stats()["presence"]["local_entries"]

    for i in range(5):
        assert ask(sub=f"t{i}", info={"i": i}) == "ok"
    assert ask(sub="t0", info={"again": True}) == "ok"  # the same entry, new info
    assert count() == 5 and server.presence("t0") == [{"id": server.presence("t0")[0]["id"], "info": {"again": True}}]
    assert ask(unsub="t1") == "ok" and count() == 4
    assert ask(sub="big", info="x" * 998) == "ok"  # 1,000 bytes of JSON with its quotes
    assert ask(sub="bigger", info="x" * 999).startswith("ConfigurationError: presence info is 1001 bytes")
    assert ask(sub="wide", info="é" * 499) == "ok"  # 1,000 bytes: counted in UTF-8, not in characters
    assert ask(sub="wider", info="é" * 500).startswith("ConfigurationError: presence info is 1002 bytes")
    assert ask(sub="odd", info="a set").startswith("TypeError")  # not JSON-able: said where the app called
    assert server.presence("bigger") == [] and count() == 6  # t0, t2-t4, big, wide
    client.close()
    assert wait_until(lambda: count() == 0)


# -- users and enveloped recipients (no sockets: the registry is plain data) -------------------


class Recorder:
    """A subscriber that records what it was handed."""

    def __init__(self, name: str, namespace: str = "/") -> None:
        self.id = name
        self.namespace = namespace
        self.user = None
        self.got: list = []

    def deliver(self, outgoing) -> None:
        self.got.append(outgoing)


def test_users_are_indexed_and_forgotten_with_their_peers():
    from syncws.pubsub.registry import Registry, check_user

    registry = Registry()
    one, two = Recorder("1"), Recorder("2")
    for sub in (one, two):
        registry.add_peer(sub)
        registry.identify(sub, None, "ann")
        sub.user = "ann"
    assert set(registry.peers_of("ann")) == {one, two}
    registry.identify(two, "ann", "bob")
    two.user = "bob"
    assert registry.peers_of("ann") == [one] and registry.peers_of("bob") == [two]
    registry.remove(one)
    registry.remove(two)
    assert registry.peers_of("ann") == [] and registry.peers_of("bob") == []
    assert check_user(7) == "7"
    for bad in ("", True, None, 1.5):
        with pytest.raises(ValueError):
            check_user(bad)


def test_fan_out_builds_the_envelope_once_for_every_enveloped_recipient():
    from syncws.protocol.payload import Outgoing
    from syncws.pubsub.registry import Registry, fan_out

    registry = Registry()
    plain, wrapped, other, sender = Recorder("p"), Recorder("w"), Recorder("o"), Recorder("s")
    registry.subscribe(plain, "t")
    registry.subscribe(wrapped, "t", envelope=True)
    registry.subscribe(other, "t", envelope=True)
    registry.subscribe(sender, "t", envelope=True)
    outgoing = Outgoing({"n": 1})
    outgoing.topic = "t"
    assert fan_out(registry.recipients("t"), outgoing, exclude=sender) == 3
    assert plain.got == [outgoing] and sender.got == []
    assert wrapped.got[0] is other.got[0]  # one envelope, shared
    assert json.loads(wrapped.got[0].payload) == {"topic": "t", "offset": None, "data": {"n": 1}}
    registry.subscribe(wrapped, "t")  # subscribing again without an envelope switches it off
    assert dict(registry.recipients("t", "/"))[wrapped] is False
    assert set(registry.subscribers("t")) == {plain, wrapped, other, sender}
