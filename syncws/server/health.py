"""Liveness and readiness, as a load balancer or Kubernetes asks for them.

* **live**: the process serves (its hub answers this request).  Fails only
  when the process is wedged, which is when a restart helps.
* **ready**: send me new connections.  Fails while the server is not
  listening, once a drain has begun (so the balancer stops sending new
  clients *before* any is refused or closed), while the broker is configured
  but unreachable (this process could not deliver other processes' publishes),
  and while the hook thread pool is saturated (as many calls wait for a
  thread as there are threads: a new connection would wait too).

Both answer JSON, ``200`` or ``503``, in the hub and without the thread
pool (a saturated pool must not hide the answer).  They are served on the
metrics and admin addresses at ``/health/live`` and ``/health/ready``, and on
the main port at ``<health_path>/live`` and ``<health_path>/ready`` when the
``health_path`` option is set (:meth:`Runtime.routes`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from .runtime import Runtime

LIVE = "/live"
READY = "/ready"
#: Where the checks are on the metrics and admin addresses.
SIDE_PREFIX = "/health"


def readiness(runtime: Runtime) -> dict[str, bool]:
    """Each readiness check by name, True when it passes (hub thread)."""
    broker = runtime.broker
    connected = broker.connected  # None: in-process, nothing to reach
    threads = runtime.thread_stats()
    return {
        "listening": runtime.bridge is not None and not runtime.finished,
        "not_draining": not runtime.draining,
        "broker": connected is not False,
        "threads": not (threads["enabled"] and threads["queued"] >= threads["size"]),
    }


def answer(runtime: Runtime, check: str, start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI answer of ``live`` or ``ready``."""
    if check == "live":
        checks = {"serving": True}
    else:
        checks = readiness(runtime)
    ok = all(checks.values())
    body = json.dumps({"status": "ok" if ok else "unavailable", "checks": checks}).encode()
    start_response(
        "200 OK" if ok else "503 Service Unavailable",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")],
    )
    return [body]


def routes(runtime: Runtime, prefix: str) -> dict[str, Callable[..., Iterable[bytes]]]:
    """``{prefix + "/live": app, prefix + "/ready": app}``: WSGI apps answered in the hub."""
    prefix = prefix.rstrip("/")
    return {
        prefix + LIVE: lambda environ, start_response: answer(runtime, "live", start_response),
        prefix + READY: lambda environ, start_response: answer(runtime, "ready", start_response),
    }
