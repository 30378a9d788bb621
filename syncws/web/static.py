"""The browser client, ``syncws.js``, served from the package: ``app.get("/syncws.js", client_js)``.

The module ships inside the Python package (``pip install syncws`` is all a
page needs) with its types, ``syncws.d.ts``.  ``client_js`` is a view
(``view(request) -> Response``): an ``App`` route or a ``mount()`` target as it
is, a Flask view as ``lambda: client_js(flask.request)``.  werkzeug's
``send_file`` answers: an ETag and ``Cache-Control: no-cache``, so browsers
revalidate and get a new version after an upgrade and a 304 otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from werkzeug.utils import send_file
from werkzeug.wrappers import Response

#: Where syncws.js and syncws.d.ts are.
STATIC = Path(__file__).with_name("static")


class StaticFile:
    """A view that serves one packaged file (GET and HEAD)."""

    def __init__(self, name: str, content_type: str) -> None:
        self.path = STATIC / name
        self.content_type = content_type

    def __call__(self, request: Any, **values: Any) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response("Method Not Allowed", status=405, headers={"Allow": "GET, HEAD"})
        response: Response = send_file(self.path, request.environ, mimetype=self.content_type)
        return response

    def __repr__(self) -> str:
        return f"<StaticFile {self.path.name}>"


#: ``syncws.js``, the channels client for browsers.
client_js = StaticFile("syncws.js", "text/javascript")  # (werkzeug adds the charset)
#: ``syncws.d.ts``, its TypeScript types.
client_types = StaticFile("syncws.d.ts", "application/typescript")
