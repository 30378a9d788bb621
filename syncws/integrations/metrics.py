"""Prometheus metrics through ``prometheus_client``, on an address of their own.

``serve(app, metrics="127.0.0.1:9100")`` (``--metrics``) serves ``/metrics``
there, in the server's hub, never on the public port.  The figures are
``server.stats()``: every second, and on every scrape, they are copied into
``prometheus_client`` counters and gauges (counters by the difference since
the last copy), so nothing is counted twice and a delivery pays nothing for
metrics.

Several processes (``--workers N``, ``gunicorn -w N``): prometheus_client's
multiprocess mode.  With ``PROMETHEUS_MULTIPROC_DIR`` set (``--workers`` sets
it to a directory of its own; gunicorn needs it set, see
docs/operations.md), each worker's values live in files there, every worker
binds the metrics address with ``SO_REUSEPORT``, and whichever answers a
scrape sums every worker's files: counters add up, connection gauges are the
sum over the live workers.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import gevent

from ..base.errors import DependencyMissing
from ..server.listener import SideServer, parse_address, serve_side
from ..server.server import EXPORTERS

log = logging.getLogger("syncws")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
REFRESH = 1.0  # seconds between copies of the stats into the metrics


def require_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:  # pragma: no cover - depends on the install
        raise DependencyMissing("metrics need prometheus_client: pip install 'syncws[metrics]'") from None
    return prometheus_client


#: (stats path, metric name, help) of every counter.
COUNTERS = (
    (("totals", "websocket_connections"), "syncws_websocket_connections", "WebSocket connections opened"),
    (("totals", "sse_connections"), "syncws_sse_connections", "event streams opened"),
    (("totals", "messages_in"), "syncws_messages_received", "WebSocket messages received"),
    (("totals", "bytes_in"), "syncws_received_bytes", "payload bytes of the messages received"),
    (("totals", "messages_out"), "syncws_messages_sent", "messages and events sent (a publish once per recipient)"),
    (("totals", "bytes_out"), "syncws_sent_bytes", "payload bytes sent"),
    (("overflow", "closes"), "syncws_overflow_closes", "peers and streams closed because they stopped reading"),
    (("overflow", "drops"), "syncws_overflow_drops", "messages dropped by the drop overflow policy"),
    (("rate_limited",), "syncws_rate_limited", "messages over a peer's rate limit"),
    (("broker", "relayed"), "syncws_broker_relayed", "publishes the broker handed to Redis"),
    (("broker", "dropped"), "syncws_broker_dropped", "publishes the broker could not hand to Redis"),
    (("broker", "reconnects"), "syncws_broker_reconnects", "times the broker reconnected to Redis"),
    (
        ("broker", "resynced"),
        "syncws_broker_resynced",
        "stored publishes delivered by a resync after a lost connection",
    ),
    (("broker", "gaps"), "syncws_broker_gaps", "times subscribers were asked to resume: a resync could not bridge"),
    (("threads", "waited"), "syncws_thread_waits", "views and hooks that found every pool thread busy"),
)


def _dig(stats: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = stats
    for key in path:
        value = value[key]
    return value


class Metrics:
    """The prometheus_client side of one server process."""

    def __init__(self, server: Any, address: str) -> None:
        self.prometheus = prometheus = require_prometheus()
        self.server = server
        self.address = address
        self.host, self.port = parse_address(address, "metrics")
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        # One process: a registry of its own.  Several: the values go to the shared
        # directory (prometheus_client's default registry is not used either way).
        registry = None if self.multiprocess else prometheus.CollectorRegistry()
        gauge_mode = {"multiprocess_mode": "livesum"} if self.multiprocess else {}
        self.registry = registry
        self._counters = {path: prometheus.Counter(name, text, registry=registry) for path, name, text in COUNTERS}
        self._refused = prometheus.Counter(
            "syncws_refused", "upgrades and streams refused, by HTTP status", ["status"], registry=registry
        )
        self._connections = prometheus.Gauge(
            "syncws_connections", "open connections", ["kind"], registry=registry, **gauge_mode
        )
        self._history = prometheus.Gauge(
            "syncws_history_entries", "publishes kept in memory for recovery", registry=registry, **gauge_mode
        )
        self._presence = prometheus.Gauge(
            "syncws_presence_entries", "local presence entries", registry=registry, **gauge_mode
        )
        self._threads = prometheus.Gauge(
            "syncws_threads", "views and hooks in the thread pool, by state", ["state"], registry=registry, **gauge_mode
        )
        self._seen: dict[Any, float] = {}
        self._wsgi: SideServer | None = None
        self._refresher: Any = None

    # -- copying the stats --------------------------------------------------------------
    def refresh(self) -> None:
        """Copy ``server.stats()`` into the metrics (hub thread)."""
        stats = self.server.stats()
        for path, counter in self._counters.items():
            self._advance(path, counter, _dig(stats, path))
        for status, count in stats["refused"].items():
            self._advance(("refused", status), self._refused.labels(status=str(status)), count)
        for kind in ("websocket", "sse"):
            self._connections.labels(kind=kind).set(stats["connections"][kind])
        self._history.set(stats["history"]["entries"])
        self._presence.set(stats["presence"]["local_entries"])
        for state in ("busy", "queued"):
            self._threads.labels(state=state).set(stats["threads"][state])

    def _advance(self, key: Any, counter: Any, value: float) -> None:
        delta = value - self._seen.get(key, 0)
        if delta > 0:
            counter.inc(delta)
            self._seen[key] = value

    def _refresh_forever(self) -> None:
        while True:
            gevent.sleep(REFRESH)
            try:
                self.refresh()
            except Exception:
                log.exception("syncws: copying the stats into the metrics failed")

    # -- serving --------------------------------------------------------------------------
    def start(self) -> None:
        """Bind the metrics address and serve ``/metrics`` (hub thread)."""
        self.refresh()
        # Every worker answers scrapes (multiprocess mode).
        self._wsgi = serve_side(self.address, "metrics", self._app, self.server.runtime, reuse_port=self.multiprocess)
        self.host, self.port = self._wsgi.server_host, self._wsgi.server_port
        self._refresher = gevent.spawn(self._refresh_forever)
        log.info("syncws: metrics on http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.kill(block=False)
        if self._wsgi is not None:
            self._wsgi.stop(timeout=0)

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"metrics are at /metrics, health checks at /health/live and /health/ready\n"]
        self.refresh()
        prometheus = self.prometheus
        registry = self.registry
        if registry is None:  # several processes: sum every process's files
            from prometheus_client import multiprocess

            registry = prometheus.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = prometheus.generate_latest(registry)
        start_response("200 OK", [("Content-Type", prometheus.CONTENT_TYPE_LATEST)])
        return [body]


EXPORTERS["prometheus"] = Metrics
