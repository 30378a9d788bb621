"""The HTTP publish and admin API: publish, history, presence, revoke and stats as JSON over HTTP.

For what is not Python (a Go service, a shell script, a webhook): the same
operations as :class:`~syncws.Server`'s methods, through exactly those
methods, so a publish here is stored in the history, relayed through Redis
and enveloped for channels users like any other.  The reference, with
``curl`` examples, is docs/reference/admin.md.

Off by default.  ``admin="HOST:PORT"`` serves it on an address of its own
(bounded like the metrics address: nothing there reaches the main port);
``admin_path="/admin"`` on the main port under that path.  Never without a
credential: ``admin_key`` (``Authorization: Bearer KEY``, compared in
constant time) or ``admin_auth``, a callable ``(werkzeug Request) -> bool``
for your own scheme; a server given neither refuses to start.  Every request
is bounded: ``admin_max_body`` bytes of body (413 over it) and
``admin_rate_limit`` requests per second per client address (429 with
``Retry-After``), unauthenticated ones included.  Requests run in the hub
(the history and presence reads go to a thread, as ``server.history`` does).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.wrappers import Request, Response

from ..base.errors import BrokerError, ConfigurationError
from ..base.threads import T
from ..protocol.limits import TokenBucket
from ..protocol.payload import to_json
from ..server.listener import SideServer, serve_side
from ..server.server import ADMIN_APIS

log = logging.getLogger("syncws")

#: Most publications in one ``batch`` request.
MAX_BATCH = 1000
#: Most ``history`` entries one request returns.
MAX_HISTORY = 1000
#: Client addresses whose rate-limit buckets are kept (the oldest go first).
MAX_TRACKED_ADDRESSES = 10_000

Auth = Callable[[Request], Any]


class AdminError(Exception):
    """A request the API refuses: its HTTP status, an error code and a message."""

    def __init__(self, status: int, code: str, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = list(headers)


def _bad(message: str) -> AdminError:
    return AdminError(400, "bad_request", message)


def _field(body: dict[str, Any], name: str, kinds: type | tuple[type, ...], required: bool = True) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise _bad(f"{name!r} is required")
        return None
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise _bad(f"{name!r} has the wrong type")
    if not isinstance(value, kinds):
        raise _bad(f"{name!r} has the wrong type")
    return value


def _payload(entry: dict[str, Any]) -> object:
    """A publication's data: any JSON value, or bytes given as base64 with ``"encoding": "base64"``."""
    if "data" not in entry:
        raise _bad("'data' is required")
    data = entry["data"]
    encoding = entry.get("encoding")
    if encoding is None:
        return data
    if encoding != "base64" or not isinstance(data, str):
        raise _bad("'encoding' may only be 'base64', with a string 'data'")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("'data' is not valid base64") from None


def _publication(entry: object) -> tuple[str, object, str | None]:
    if not isinstance(entry, dict):
        raise _bad("a publication is a JSON object")
    topic = _field(entry, "topic", str)
    if not topic:
        raise _bad("'topic' must not be empty")
    return topic, _payload(entry), _field(entry, "namespace", str, required=False)


def _encode(value: object) -> dict[str, Any]:
    if isinstance(value, bytes):
        return {"data": base64.b64encode(value).decode("ascii"), "encoding": "base64"}
    return {"data": value}


class AdminAPI:
    """The admin API of one server: a WSGI app, mounted on the main port or served on its own address."""

    def __init__(
        self,
        server: Any,
        address: str | None,
        path: str | None,
        key: str | None,
        auth: Auth | None,
    ) -> None:
        if key is not None and auth is not None:
            raise ConfigurationError("give admin_key or admin_auth, not both")
        if key is None and auth is None:
            raise ConfigurationError(
                "the admin API needs a credential: admin_key (SYNCWS_ADMIN_KEY) or admin_auth=callable(request)"
            )
        if auth is not None and not callable(auth):
            raise ConfigurationError(f"admin_auth must be a callable(request) -> bool, not {type(auth).__name__}")
        if path is not None and (not path.startswith("/") or path.rstrip("/") == ""):
            raise ConfigurationError(f"admin_path must start with '/' and name a path, not {path!r}")
        self.server = server
        self.address = address
        self.path = path.rstrip("/") if path is not None else None
        self._key = key.encode("utf-8") if key is not None else None
        self._auth = auth
        options = server.runtime.options
        self.max_body: int = options.admin_max_body
        self.rate: tuple[float, float] | None = options.admin_rate_limit
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._operations: dict[str, Callable[[Request, dict[str, Any]], Any]] = {
            "/publish": self._publish,
            "/batch": self._batch,
            "/history": self._history,
            "/presence": self._presence,
            "/disconnect": self._disconnect,
            "/unsubscribe": self._unsubscribe,
            "/stats": self._stats,
        }
        self._wsgi: SideServer | None = None
        self.port: int | None = None
        if self.path is not None:  # the main port answers these paths in the hub, before the app
            for name in self._operations:
                server.runtime.routes[self.path + name] = self

    # -- serving --------------------------------------------------------------------------
    def start(self) -> None:
        """Bind the admin address, when there is one (hub thread)."""
        if self.address is None:
            return
        # Every --workers child answers; a publish reaches all of them through the broker.
        self._wsgi = serve_side(self.address, "admin", self._side_app, self.server.runtime, reuse_port=True)
        self.port = self._wsgi.server_port
        log.info("syncws: admin API on http://%s:%d/", self._wsgi.server_host, self.port)

    def stop(self) -> None:
        if self._wsgi is not None:
            self._wsgi.stop(timeout=0)

    def _side_app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return self._answer(environ, start_response, "")

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """A request on the main port, under ``admin_path``."""
        return self._answer(environ, start_response, self.path or "")

    def _answer(self, environ: dict[str, Any], start_response: Callable[..., Any], base: str) -> Iterable[bytes]:
        request = Request(environ)
        try:
            result = self._handle(request, request.path[len(base) :])
            response = Response(to_json(result), status=200, mimetype="application/json")
        except AdminError as exc:
            body = {"error": {"code": exc.code, "message": exc.message}}
            response = Response(to_json(body), status=exc.status, mimetype="application/json", headers=exc.headers)
            if exc.status >= 500:
                log.warning("syncws: admin API %s: %s", request.path, exc.message)
        except Exception:
            log.exception("syncws: admin API %s failed", request.path)
            body = {"error": {"code": "internal", "message": "the operation failed; see the server's log"}}
            response = Response(to_json(body), status=500, mimetype="application/json")
        response.headers["Cache-Control"] = "no-store"
        return response(environ, start_response)

    # -- checks, in the order a request meets them -------------------------------------------
    def _handle(self, request: Request, name: str) -> object:
        self._check_rate(self._client(request))
        self._check_credentials(request)
        operation = self._operations.get(name)
        if operation is None:
            raise AdminError(404, "not_found", f"no operation {name!r}; see docs/reference/admin.md")
        if request.method != "POST" and not (name == "/stats" and request.method == "GET"):
            raise AdminError(405, "method_not_allowed", "use POST", [("Allow", "POST")])
        return operation(request, self._body(request) if request.method == "POST" else {})

    def _client(self, request: Request) -> str:
        transport = request.environ.get("syncws.transport")
        address = getattr(transport, "remote_address", None)  # after trusted_proxies, on the main port
        return str(address or request.remote_addr or "-")

    def _check_rate(self, address: str) -> None:
        if self.rate is None:
            return
        now = time.monotonic()
        buckets = self._buckets
        bucket = buckets.get(address)
        if bucket is None:
            bucket = buckets[address] = TokenBucket(self.rate[0], self.rate[1], now)
            if len(buckets) > MAX_TRACKED_ADDRESSES:
                buckets.popitem(last=False)
        if not bucket.take(1, now):
            wait = str(max(1, math.ceil(1 / self.rate[0])))
            raise AdminError(429, "rate_limited", "too many admin API requests", [("Retry-After", wait)])

    def _check_credentials(self, request: Request) -> None:
        if self._auth is not None:
            try:
                allowed = bool(self._auth(request))
            except Exception:
                log.exception("syncws: admin_auth raised; refusing the request")
                allowed = False
            if not allowed:
                raise AdminError(401, "unauthorized", "not authorized", [("WWW-Authenticate", "Bearer")])
            return
        assert self._key is not None
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise AdminError(
                401,
                "unauthorized",
                "an API key is required: Authorization: Bearer KEY",
                [("WWW-Authenticate", "Bearer")],
            )
        if not hmac.compare_digest(given.strip().encode("utf-8"), self._key):
            raise AdminError(
                401, "unauthorized", "wrong API key", [("WWW-Authenticate", 'Bearer error="invalid_token"')]
            )

    def _body(self, request: Request) -> dict[str, Any]:
        length = request.content_length
        if length is not None and length > self.max_body:
            raise AdminError(413, "too_large", f"the body is over admin_max_body ({self.max_body} bytes)")
        raw = request.stream.read(self.max_body + 1)
        if len(raw) > self.max_body:
            raise AdminError(413, "too_large", f"the body is over admin_max_body ({self.max_body} bytes)")
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise _bad("the body is not JSON") from None
        if not isinstance(body, dict):
            raise _bad("the body is a JSON object")
        return body

    # -- operations -------------------------------------------------------------------------
    def _publish(self, request: Request, body: dict[str, Any]) -> object:
        topic, data, namespace = _publication(body)
        self._checked(self.server.publish, topic, data, namespace=namespace)
        return {"published": 1}

    def _batch(self, request: Request, body: dict[str, Any]) -> object:
        entries = _field(body, "publications", list)
        if len(entries) > MAX_BATCH:
            raise _bad(f"at most {MAX_BATCH} publications in one batch")
        publications = [_publication(entry) for entry in entries]  # all checked before any is sent
        for topic, data, namespace in publications:
            self._checked(self.server.publish, topic, data, namespace=namespace)
        return {"published": len(publications)}

    def _history(self, request: Request, body: dict[str, Any]) -> object:
        topic = _field(body, "topic", str)
        limit = _field(body, "limit", int, required=False)
        if limit is not None and not 0 <= limit <= MAX_HISTORY:
            raise _bad(f"'limit' must be from 0 to {MAX_HISTORY}")
        entries = self._checked(
            self.server.history,
            topic,
            _field(body, "namespace", str, required=False),
            _field(body, "since", str, required=False),
            MAX_HISTORY if limit is None else limit,
        )
        return {"publications": [{"offset": entry.offset, **_encode(entry.data)} for entry in entries]}

    def _presence(self, request: Request, body: dict[str, Any]) -> object:
        topic = _field(body, "topic", str)
        members = self._checked(self.server.presence, topic, _field(body, "namespace", str, required=False))
        return {"members": members, "count": len(members)}

    def _disconnect(self, request: Request, body: dict[str, Any]) -> object:
        user = _field(body, "user", (str, int))
        code = _field(body, "code", int, required=False)
        reason = _field(body, "reason", str, required=False) or ""
        self._checked(self.server.disconnect, user=user, reason=reason, code=4003 if code is None else code)
        return {}

    def _unsubscribe(self, request: Request, body: dict[str, Any]) -> object:
        user = _field(body, "user", (str, int))
        topic = _field(body, "topic", str)
        self._checked(self.server.unsubscribe, user, topic, namespace=_field(body, "namespace", str, required=False))
        return {}

    def _stats(self, request: Request, body: dict[str, Any]) -> object:
        return self.server.stats()

    @staticmethod
    def _checked(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Call a server method; its refusals of bad input are 400, an unreachable broker 503."""
        try:
            return fn(*args, **kwargs)
        except ConfigurationError as exc:
            raise _bad(str(exc)) from None
        except BrokerError as exc:
            raise AdminError(503, "unavailable", str(exc)) from None
        except TypeError as exc:  # data that is not JSON-able
            raise _bad(str(exc)) from None


ADMIN_APIS["http"] = AdminAPI
