"""Let Flask route a WebSocket upgrade like any other GET.

werkzeug's ``Map.bind_to_environ`` turns an upgrade request into a ``ws://``
bind, and such a bind only matches rules declared with ``websocket=True``:
every ordinary Flask view then answers werkzeug's ``WebsocketMismatch`` 400
before it can run.  With syncws the *view* decides the upgrade (it returns a
WebSocket handler), so the request must be matched as HTTP, exactly as the
syncws ``App`` does with ``match(websocket=False)``.

Nothing happens at import: the patch is made when a server is built or a
handler is defined (this module registers :func:`patch_flask` with the server
layer), and only if Flask has been imported by then.

The fix is made once on the ``Flask`` class, so it holds for every app,
however it is wrapped or served.  It changes only requests that werkzeug
would refuse anyway: upgrade requests on the syncws server, and upgrade
requests to apps that declare no ``websocket=True`` rule at all (under
``flask run`` those now reach the view, whose handler answers with a clear
"use python -m syncws" error instead of a bare 400).  Apps that do declare
WebSocket rules (Flask-Sockets style) keep werkzeug's routing elsewhere.
"""

from __future__ import annotations

import sys
from typing import Any

from ..server.handler import FRAMEWORK_PREPARERS
from ..server.http import TRANSPORT_KEY

_MARK = "_syncws_routes_upgrades"


def _has_websocket_rules(url_map: Any) -> bool:
    return any(getattr(rule, "websocket", False) for rule in url_map.iter_rules())


def patch_flask() -> None:
    """Patch ``flask.Flask`` once, if Flask has been imported (never imports it)."""
    flask = sys.modules.get("flask")
    cls = getattr(flask, "Flask", None)
    if cls is None or getattr(cls.create_url_adapter, _MARK, False):
        return
    original = cls.create_url_adapter

    def create_url_adapter(self: Any, request: Any) -> Any:
        adapter = original(self, request)
        if adapter is not None and request is not None and getattr(adapter, "websocket", False):
            if TRANSPORT_KEY in request.environ or not _has_websocket_rules(self.url_map):
                adapter.websocket = False
        return adapter

    setattr(create_url_adapter, _MARK, True)
    create_url_adapter.__doc__ = original.__doc__
    cls.create_url_adapter = create_url_adapter


FRAMEWORK_PREPARERS.append(patch_flask)
