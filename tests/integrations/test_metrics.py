"""Prometheus metrics: scraped with a real HTTP client and parsed with prometheus_client's parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import websocket
from prometheus_client.parser import text_string_to_metric_families

from syncws import App, ConfigurationError, create_event_stream, define_websocket_handler, serve

from ..conftest import connect, wait_until
from ..support import HoldingApp, RedisServer, SyncwsProcess, free_port, http_exchange, parse_response, upgrade_request

ROOT = Path(__file__).resolve().parents[2]


def scrape(url: str) -> dict:
    """``{(name, labels as a sorted tuple): value}`` of the syncws samples."""
    response = requests.get(url, timeout=5)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name.startswith("syncws_") and not sample.name.endswith("_created"):
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def app_for_metrics() -> App:
    app = App()
    app.get("/ws", define_websocket_handler(message=lambda peer, msg: peer.send(msg), allowed_origins=["https://ok"]))

    @app.get("/sse")
    def sse(request):
        stream = create_event_stream(request, keep_alive=None)
        stream.push("one")
        stream.push("two")
        return stream

    return app


def test_metrics_match_what_the_clients_did(start_server):
    server = start_server(app_for_metrics(), metrics="127.0.0.1:0")
    metrics_url = f"http://127.0.0.1:{server.metrics.port}/metrics"
    clients = [connect(server, "/ws", suppress_origin=True), connect(server, "/ws", suppress_origin=True)]
    for client in clients:
        for word in ("a", "bb", "ccc"):
            client.send(word)
            assert client.recv() == word
    stream = requests.get(server.url + "/sse", stream=True, timeout=5)
    lines = stream.iter_lines()
    assert next(lines) == b"data: one"
    refused = parse_response(http_exchange(server, upgrade_request("/ws", extra="Origin: https://evil\r\n")))
    assert refused[0] == 403
    samples = scrape(metrics_url)
    assert value(samples, "syncws_websocket_connections_total") == 2
    assert value(samples, "syncws_sse_connections_total") == 1
    assert value(samples, "syncws_connections", kind="websocket") == 2
    assert value(samples, "syncws_connections", kind="sse") == 1
    assert value(samples, "syncws_messages_received_total") == 6
    assert value(samples, "syncws_received_bytes_total") == 12
    assert value(samples, "syncws_messages_sent_total") == 8  # six echoes, two events
    assert value(samples, "syncws_refused_total", status="403") == 1
    assert value(samples, "syncws_overflow_closes_total") == 0
    stats = server.stats()
    assert stats["totals"]["messages_in"] == 6 and stats["refused"] == {403: 1}
    assert stats["connections"]["by_namespace"] == {
        "/ws": {"websocket": 2, "sse": 0},
        "/sse": {"websocket": 0, "sse": 1},
    }
    stream.close()
    for client in clients:
        client.close()
    assert wait_until(lambda: value(scrape(metrics_url), "syncws_connections", kind="websocket") == 0)
    # never on the public port
    assert requests.get(server.url + "/metrics", timeout=5).status_code == 404
    assert requests.get(metrics_url.replace("/metrics", "/other"), timeout=5).status_code == 404


def test_a_full_thread_pool_shows_in_the_metrics(start_server):
    holding = HoldingApp()
    server = start_server(holding.app, metrics="127.0.0.1:0", thread_pool_size=1)
    url = f"http://127.0.0.1:{server.metrics.port}/metrics"
    holding.request(server, 2)
    try:
        assert wait_until(
            lambda: (
                value(scrape(url), "syncws_threads", state="busy") == 1
                and value(scrape(url), "syncws_threads", state="queued") == 1
            )
        ), scrape(url)
        assert value(scrape(url), "syncws_thread_waits_total") == 1
    finally:
        holding.release()
    assert holding.answers == ["held", "held"]
    assert wait_until(lambda: value(scrape(url), "syncws_threads", state="queued") == 0)


def test_bad_metrics_settings(start_server):
    with pytest.raises(ConfigurationError, match="HOST:PORT"):
        serve(App(), port=0, background=True, metrics="9100")
    taken = start_server(App(), metrics="127.0.0.1:0")
    with pytest.raises(ConfigurationError, match="cannot serve metrics"):
        serve(App(), port=0, background=True, metrics=f"127.0.0.1:{taken.metrics.port}")


@pytest.mark.slow
def test_every_worker_reaches_the_scrape(tmp_path):
    """--workers 2: a scrape answered by either worker counts both (prometheus_client multiprocess mode)."""
    metrics_port = free_port()
    with RedisServer(tmp_path) as redis_server:
        process = SyncwsProcess(
            "tests.apps.metrics_app:app",
            "--port",
            "0",
            "--workers",
            "2",
            "--broker",
            redis_server.url,
            "--metrics",
            f"127.0.0.1:{metrics_port}",
            cwd=ROOT,
        )
        try:
            url = process.wait_for_url()
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            clients, pids = [], set()
            while len(pids) < 2 and len(clients) < 60:  # until both workers have connections
                client = websocket.create_connection(url.replace("http", "ws") + "/ws", timeout=5)
                pids.add(client.recv())
                clients.append(client)
            assert len(pids) == 2, "every connection went to one worker"
            for client in clients:
                client.send("x")
                assert client.recv() == "x"
            count = len(clients)

            def counted() -> bool:
                samples = scrape(metrics_url)
                return (
                    value(samples, "syncws_messages_received_total") == count
                    and value(samples, "syncws_connections", kind="websocket") == count
                    and value(samples, "syncws_websocket_connections_total") == count
                )

            assert wait_until(counted, timeout=10), scrape(metrics_url)
            for _ in range(10):  # whichever worker answers, the figures are the sums
                assert value(scrape(metrics_url), "syncws_messages_received_total") == count
            for client in clients:
                client.close()
            assert wait_until(
                lambda: value(scrape(metrics_url), "syncws_connections", kind="websocket") == 0, timeout=10
            )
        finally:
            process.terminate()
    assert process.proc.returncode == 0, process.err


def test_the_example_dashboard_uses_only_metrics_the_server_exports(start_server):
    import re

    server = start_server(app_for_metrics(), metrics="127.0.0.1:0")
    assert requests.get(server.url + "/ws", timeout=5).status_code == 426  # a refusal: its labelled counter appears
    exported = {name.removesuffix("_total") for name, _ in scrape(f"http://127.0.0.1:{server.metrics.port}/metrics")}
    dashboard = json.loads((ROOT / "examples" / "grafana_dashboard.json").read_text())
    used = {
        name.removesuffix("_total")
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"syncws_[a-z_]+", target["expr"])
    }
    assert used and used <= exported, used - exported
