"""The browser client, ``syncws.js``, served from the package: ``app.get("/syncws.js", client_js)``.

The module ships inside the Python package (``pip install syncws`` is all a
page needs) with its types, ``syncws.d.ts``.  ``client_js`` is a view
(``view(request) -> Response``): an ``App`` route or a ``mount()`` target as it
is, a Flask view as ``lambda: client_js(flask.request)``.  Its ETag is the
content's hash and ``Cache-Control: no-cache`` makes browsers revalidate, so a
page gets a new version after an upgrade and a 304 otherwise.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from werkzeug.wrappers import Response

#: Where syncws.js and syncws.d.ts are.
STATIC = Path(__file__).with_name("static")


class StaticFile:
    """A view that serves one packaged file, read once, with an ETag."""

    def __init__(self, name: str, content_type: str) -> None:
        self.path = STATIC / name
        self.content_type = content_type
        self._body: bytes | None = None
        self._etag = ""

    @property
    def body(self) -> bytes:
        if self._body is None:
            body = self.path.read_bytes()
            self._etag = hashlib.sha256(body).hexdigest()[:20]
            self._body = body
        return self._body

    def __call__(self, request: Any, **values: Any) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response("Method Not Allowed", status=405, headers={"Allow": "GET, HEAD"})
        response = Response(self.body, content_type=self.content_type)
        response.set_etag(self._etag)
        response.headers["Cache-Control"] = "no-cache"
        return response.make_conditional(request)

    def __repr__(self) -> str:
        return f"<StaticFile {self.path.name}>"


#: ``syncws.js``, the channels client for browsers.
client_js = StaticFile("syncws.js", "text/javascript; charset=utf-8")
#: ``syncws.d.ts``, its TypeScript types.
client_types = StaticFile("syncws.d.ts", "application/typescript; charset=utf-8")
