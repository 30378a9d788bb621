"""Liveness and readiness: on the main port at health_path, on the metrics and admin addresses at /health."""

from __future__ import annotations

import threading

import pytest
import requests

from syncws import App, define_websocket_handler
from syncws.pubsub.redis_broker import RedisBroker

from ..conftest import connect, wait_until
from ..support.processes import free_port


def echo_app() -> App:
    app = App()
    app.get("/_ws", define_websocket_handler(message=lambda peer, message: peer.send(message.text())))
    app.get("/health/live", lambda request: "the app's own view")
    return app


def get(url: str) -> tuple[int, dict]:
    response = requests.get(url, timeout=5)
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    return response.status_code, response.json()


def test_both_checks_answer_on_the_main_port_at_the_health_path(start_server):
    server = start_server(echo_app(), health_path="/_ops/")
    assert get(server.url + "/_ops/live") == (200, {"status": "ok", "checks": {"serving": True}})
    status, body = get(server.url + "/_ops/ready")
    assert status == 200 and body["checks"] == {
        "listening": True,
        "not_draining": True,
        "broker": True,
        "threads": True,
    }
    # Other paths are the app's, its own /health/live included.
    assert requests.get(server.url + "/health/live", timeout=5).text == "the app's own view"
    client = connect(server)
    client.send("hi")
    assert client.recv() == "hi"


def test_without_a_health_path_the_main_port_serves_none(start_server):
    server = start_server(echo_app())
    assert requests.get(server.url + "/health/ready", timeout=5).status_code == 404


def test_the_metrics_address_answers_both(start_server):
    server = start_server(echo_app(), metrics="127.0.0.1:0")
    base = f"http://127.0.0.1:{server.metrics.port}"
    assert get(base + "/health/live")[0] == 200
    assert get(base + "/health/ready")[0] == 200
    server.call_in_hub(server.drain, 5, 5)
    assert wait_until(lambda: requests.get(base + "/health/ready", timeout=5).status_code == 503)
    assert get(base + "/health/live")[0] == 200  # draining is not dead: no restart


def test_not_ready_while_the_broker_cannot_reach_redis(start_server):
    # Nothing listens on this port: the broker keeps trying, and readiness says so.
    broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0", max_backoff=0.2)
    server = start_server(echo_app(), broker=broker, health_path="/health")
    status, body = get(server.url + "/health/ready")
    assert status == 503 and body["checks"]["broker"] is False and body["status"] == "unavailable"
    assert get(server.url + "/health/live")[0] == 200


def test_not_ready_while_the_thread_pool_is_saturated_and_ready_again_after(start_server):
    release = threading.Event()
    app = App()

    @app.get("/slow")
    def slow(request):
        release.wait(10)
        return "done"

    server = start_server(app, threads=True, thread_pool_size=1, health_path="/health")
    calls = [threading.Thread(target=requests.get, args=(server.url + "/slow",), kwargs={"timeout": 10}) for _ in "ab"]
    for call in calls:
        call.start()
    # One view holds the only thread and one waits for it: a new client would wait too.
    assert wait_until(lambda: server.stats()["threads"]["queued"] == 1)
    status, body = get(server.url + "/health/ready")  # answered in the hub, not behind the queue
    assert status == 503 and body["checks"]["threads"] is False
    release.set()
    for call in calls:
        call.join(10)
    assert get(server.url + "/health/ready")[0] == 200


def test_not_ready_before_the_server_listens_and_after_it_stopped(start_server):
    from syncws import Server
    from syncws.server.health import readiness

    server = Server(echo_app(), port=0)
    assert readiness(server.runtime)["listening"] is False
    running = start_server(echo_app())
    assert readiness(running.runtime)["listening"] is True
    running.stop(timeout=1)
    assert readiness(running.runtime)["listening"] is False


@pytest.mark.parametrize("path", ["health", ""])
def test_a_health_path_must_start_with_a_slash(start_server, path):
    from syncws import ConfigurationError

    with pytest.raises(ConfigurationError, match="health_path"):
        start_server(echo_app(), health_path=path)
