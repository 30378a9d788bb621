"""Let Flask route a WebSocket upgrade like any other GET.

werkzeug's ``Map.bind_to_environ`` turns an upgrade request into a ``ws://``
bind, and such a bind only matches rules declared with ``websocket=True``:
every ordinary Flask view then answers werkzeug's ``WebsocketMismatch`` 400
before it can run.  On syncws the *view* decides the upgrade (it returns a
WebSocket handler), so the request must be matched as HTTP, exactly as the
syncws ``App`` does with ``match(websocket=False)`` (SPEC §8 "Routing").
"""

from __future__ import annotations

from typing import Any

from .websocket import TRANSPORT_KEY


def route_upgrades_as_http(app: Any) -> None:
    """Patch a Flask(-like) app instance so its URL adapter matches upgrades as HTTP.

    Only requests served by the syncws server (those carrying its transport in
    the environ) are affected; anything without ``create_url_adapter`` and
    ``url_map`` is left alone.
    """
    original = getattr(app, "create_url_adapter", None)
    if original is None or not hasattr(app, "url_map") or getattr(original, "_syncws", False):
        return

    def create_url_adapter(request: Any) -> Any:
        adapter = original(request)
        if adapter is not None and request is not None and TRANSPORT_KEY in request.environ:
            adapter.websocket = False
        return adapter

    create_url_adapter._syncws = True  # type: ignore[attr-defined]
    try:
        app.create_url_adapter = create_url_adapter
    except (AttributeError, TypeError):
        pass  # a slotted or frozen object: nothing we can do
