"""A channels client on websockets' sync client: one reader thread per client, any caller thread.

The reader thread owns the connection: it connects (with a token), resubscribes
every topic from its last offset, reads, answers pings, and on a lost
connection waits a capped, fully jittered back-off and starts again, unless the
close code says not to (``protocol.channels.should_reconnect``).  Callers send
requests from their own threads and wait for the reply matched by its id.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import queue
import random
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from ..base.errors import ClientClosed, DependencyMissing, RequestFailed
from ..protocol.channels import SUBPROTOCOL, Push, backoff_delay, should_reconnect
from ..protocol.payload import to_json

log = logging.getLogger("syncws.client")


def _websockets() -> Any:
    try:
        from websockets.sync import client
    except ImportError:  # pragma: no cover - the test extra installs it
        raise DependencyMissing("the channels client needs websockets: pip install 'syncws[client]'") from None
    return client


class Publication(NamedTuple):
    """One publish a subscription received: ``topic``, ``offset`` (None without history) and ``data``."""

    topic: str
    offset: str | None
    data: Any


class Subscription:
    """A topic the client receives; iterate it (or give ``on_publication``) for its publications.

    ``recovered``, ``replayed`` and ``offset`` are those of the last
    (re)subscribe: after a reconnect, ``recovered`` False means publications
    were missed (reload the state).  ``active`` is False once unsubscribed,
    revoked by the server, or the client closed.
    """

    def __init__(
        self,
        client: Client,
        topic: str,
        since: str | None,
        on_publication: Callable[[Publication], Any] | None,
        on_presence: Callable[[dict[str, Any]], Any] | None,
    ) -> None:
        self.client = client
        self.topic = topic
        self.offset = since
        self.recovered = False
        self.replayed = 0
        self.active = True
        self.heard = False  # a publication arrived since the last (re)subscribe request
        self.confirmed = False  # the server answered the first subscribe: reconnects resubscribe it
        #: How many times a reconnect subscribed this again (``recovered`` says how each went).
        self.resubscribes = 0
        self.on_publication = on_publication
        self.on_presence = on_presence
        self._queue: queue.SimpleQueue[Publication | None] = queue.SimpleQueue()

    def _deliver(self, publication: Publication) -> None:
        self.heard = True
        if publication.offset is not None:
            self.offset = publication.offset
        if self.on_publication is not None:
            _safely(self.on_publication, publication)
        else:
            self._queue.put(publication)

    def _end(self) -> None:
        if self.active:
            self.active = False
            self._queue.put(None)

    def get(self, timeout: float | None = None) -> Publication:
        """The next publication; ``TimeoutError`` after ``timeout`` seconds, ``ClientClosed`` once ended."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no publication on {self.topic!r} in {timeout} s") from None
        if item is None:
            self._queue.put(None)  # every later get ends too
            raise ClientClosed(self.client.close_code, "the subscription ended")
        return item

    def __iter__(self) -> Iterator[Publication]:
        while True:
            try:
                yield self.get()
            except ClientClosed:
                return

    def unsubscribe(self) -> None:
        self.client.unsubscribe(self.topic)


class _Pending:
    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: dict[str, Any] | None = None


class Client:
    """``Client("ws://host/_syncws", token=..., get_token=...)``: connects at once, in the background.

    ``token``: sent with the first connect; ``get_token()``: called for a
    fresh token when the server asks for one (the credentials expire) and
    for every reconnect (or the first connect without ``token``).
    ``timeout``: how long a request waits for the connection and its reply.
    ``backoff_base`` and ``backoff_cap``: seconds of the reconnect back-off
    (the n-th retry waits a uniform random time up to
    ``min(cap, base * 2**n)``).  ``heartbeat_grace``: seconds past the
    server's heartbeat interval after which a silent connection is taken for
    dead and replaced (35 s by default: under the 60 s at which proxies
    commonly drop idle connections).  ``on_message(data)``: the server's
    ``message`` pushes.  ``on_resubscribe(subscription)``: after each
    resubscribe of a reconnect; ``subscription.recovered`` False means
    publications were missed (reload what the page shows).  Other keywords go to ``websockets.sync.client.connect``.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        get_token: Callable[[], str] | None = None,
        timeout: float = 10.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        heartbeat_grace: float = 10.0,
        on_message: Callable[[Any], Any] | None = None,
        on_resubscribe: Callable[[Subscription], Any] | None = None,
        **connect_options: Any,
    ) -> None:
        self._connect = _websockets().connect
        self.url = url
        self._token = token
        self.get_token = get_token
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.heartbeat_grace = heartbeat_grace
        self.on_message = on_message
        self.on_resubscribe = on_resubscribe
        self._options = connect_options
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # the pending replies and the subscriptions
        self._send_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._subscriptions: dict[str, tuple[Subscription, bool]] = {}  # topic -> (sub, presence events)
        self._ws: Any = None
        self._connected = threading.Event()
        self._stop = threading.Event()
        #: Set once the client stopped for good: the close code (None: closed by ``close()``) and reason.
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed = False
        #: What the server said at the last connect: ``client``, ``user``, ``info``, ``expires_in``, ``ping``.
        self.session: dict[str, Any] = {}
        self.reconnects = 0  # connections made after the first
        self._thread = threading.Thread(target=self._run, name="syncws-client", daemon=True)
        self._thread.start()

    # -- the public API ---------------------------------------------------------------------
    def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until connected; ``TimeoutError``, or ``ClientClosed`` when it stopped."""
        if not self._connected.wait(self.timeout if timeout is None else timeout):
            self._check_open()
            raise TimeoutError(f"not connected to {self.url} in time")
        self._check_open()

    def subscribe(
        self,
        topic: str,
        *,
        since: str | None = None,
        on_publication: Callable[[Publication], Any] | None = None,
        presence_events: bool = False,
        on_presence: Callable[[dict[str, Any]], Any] | None = None,
    ) -> Subscription:
        """Subscribe (after ``since``: the replay first); ``RequestFailed`` when the server refuses.

        ``presence_events``: ``join``/``leave`` events go to ``on_presence``.
        """
        sub = Subscription(self, topic, since, on_publication, on_presence)
        with self._lock:
            previous = self._subscriptions.get(topic)
            if previous is not None:
                previous[0]._end()
            self._subscriptions[topic] = (sub, presence_events)
        try:
            result = self._request("subscribe", topic=topic, since=since, presence_events=presence_events)
        except BaseException:
            with self._lock:
                if self._subscriptions.get(topic, (None,))[0] is sub:
                    del self._subscriptions[topic]
            sub._end()
            raise
        self._recovered(sub, result)
        sub.confirmed = True
        return sub

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            entry = self._subscriptions.pop(topic, None)
        if entry is not None:
            entry[0]._end()
            self._request("unsubscribe", topic=topic)

    def publish(self, topic: str, data: object, *, exclude_self: bool = False) -> None:
        """Publish to ``topic`` (when the server's ``authorize`` allows it)."""
        self._request("publish", topic=topic, data=data, exclude_self=exclude_self)

    def rpc(self, method: str, params: object = None, *, timeout: float | None = None) -> Any:
        """Call an RPC method: its result, ``RequestFailed`` for its error, ``TimeoutError`` after ``timeout``."""
        return self._request("rpc", timeout=timeout, method=method, params=params)

    def presence(self, topic: str, *, by_user: bool = False) -> list[dict[str, Any]]:
        """Who is subscribed to ``topic``: ``[{"client", "user", "info"}]`` (one per user with ``by_user``)."""
        members: list[dict[str, Any]] = self._request("presence", topic=topic, by_user=by_user)["members"]
        return members

    def history(self, topic: str, *, since: str | None = None, limit: int | None = None) -> list[Publication]:
        result = self._request("history", topic=topic, since=since, limit=limit)
        return [Publication(topic, item["offset"], _data(item)) for item in result["publications"]]

    def send(self, data: object) -> None:
        """A ``message`` request: the server's ``message`` hook gets ``data``."""
        self._request("message", data=data)

    def close(self) -> None:
        """Close the connection for good (the subscriptions end)."""
        self._stop.set()
        ws = self._ws
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass
        if threading.current_thread() is not self._thread:  # (a callback may close its own client)
            self._thread.join(self.timeout)
        self._finish(None, "")

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests -------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise ClientClosed(self.close_code, self.close_reason)

    def _request(self, kind: str, timeout: float | None = None, **fields: Any) -> Any:
        wait = self.timeout if timeout is None else timeout
        self.wait_connected(wait)
        pending = _Pending()
        request_id = next(self._ids)  # (itertools.count is atomic)
        body = {"type": kind, "id": request_id, **{k: v for k, v in fields.items() if v is not None}}
        text = to_json(body)  # a TypeError for what JSON cannot carry, here
        with self._lock:
            self._pending[request_id] = pending
        try:
            try:
                self._send(text)
            except Exception:
                pass  # the connection just went: the reply never comes, the wait below says so
            if not pending.done.wait(wait):
                raise TimeoutError(f"no reply to {kind} in {wait} s")
        finally:
            with self._lock:
                self._pending.pop(request_id, None)
        reply = pending.reply
        if reply is None:
            self._check_open()
            raise ConnectionError(f"the connection was lost before the reply to {kind}")
        if "error" in reply:
            error = reply["error"]
            raise RequestFailed(str(error.get("code")), str(error.get("message")))
        return reply.get("result")

    def _send(self, text: str) -> None:
        ws = self._ws
        if ws is None:
            raise ConnectionError("not connected")
        with self._send_lock:
            ws.send(text)

    def _recovered(self, sub: Subscription, result: dict[str, Any]) -> None:
        """A (re)subscribe's reply; its offset only when no publication came first (it is never newer)."""
        sub.recovered = bool(result.get("recovered"))
        sub.replayed = int(result.get("replayed") or 0)
        if result.get("offset") is not None and not sub.heard:
            sub.offset = result["offset"]

    # -- the reader thread ------------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        first = True
        while not self._stop.is_set():
            code, reason, connected = self._session(first)
            if connected:
                attempt = 0
                first = False
            if self._stop.is_set():
                break
            if not should_reconnect(code, self.get_token is not None):
                self._finish(code, reason)
                return
            delay = backoff_delay(attempt, self.backoff_base, self.backoff_cap, random.random())
            attempt += 1
            log.info("syncws client: connection lost (%s %s); reconnecting in %.2f s", code, reason, delay)
            if self._stop.wait(delay):
                break
        self._finish(None, "")

    def _session(self, first: bool) -> tuple[int | None, str, bool]:
        """One connection, from connect to its end: ``(close code, reason, whether it got connected)``."""
        try:
            opening = self._connect(self.url, subprotocols=[SUBPROTOCOL], open_timeout=self.timeout, **self._options)
            ws = opening.__enter__()  # (websockets 17 wants connect() used as a context manager)
        except Exception as exc:
            log.info("syncws client: cannot connect to %s: %s", self.url, exc)
            return None, str(exc), False
        self._ws = ws
        connected = False
        try:
            token = self._token if first and self._token is not None else self._fresh_token()
            ws.send(to_json({"type": "connect", "id": 0, "token": token}))
            reply = json.loads(ws.recv(timeout=self.timeout))
            if "error" in reply:
                return None, str(reply["error"]), False  # (a close with the reason follows)
            self.session = reply.get("result") or {}
            connected = True
            if not first:
                self.reconnects += 1
            self._connected.set()
            threading.Thread(target=self._resubscribe, daemon=True).start()
            silence = float(self.session.get("ping") or 25.0) + self.heartbeat_grace
            while not self._stop.is_set():
                self._handle(json.loads(ws.recv(timeout=silence)))
            return None, "", connected
        except TimeoutError:
            log.info("syncws client: the server was silent too long; reconnecting")
            _abort(ws)  # a closing handshake would wait for the silent server too
            return None, "heartbeat timeout", connected
        except Exception as exc:
            code, reason = _close_of(exc)
            return code, reason, connected
        finally:
            self._connected.clear()
            self._ws = None
            try:
                ws.close()
            except Exception:
                pass
            with self._lock:
                pending = list(self._pending.values())
            for waiter in pending:
                waiter.done.set()  # no reply: the waiters say the connection was lost

    def _fresh_token(self) -> str | None:
        return self.get_token() if self.get_token is not None else self._token

    def _resubscribe(self) -> None:
        """Subscribe again to every topic, each from its last offset (a thread: replies come to the reader)."""
        with self._lock:
            entries = [(sub, events) for sub, events in self._subscriptions.values() if sub.confirmed]
        for sub, events in entries:
            sub.heard = False
            try:
                result = self._request("subscribe", topic=sub.topic, since=sub.offset, presence_events=events)
            except RequestFailed:
                with self._lock:
                    self._subscriptions.pop(sub.topic, None)
                sub._end()
            except Exception:
                return  # lost again: the next connection resubscribes
            else:
                self._recovered(sub, result)
                sub.resubscribes += 1
                if self.on_resubscribe is not None:
                    _safely(self.on_resubscribe, sub)

    def _handle(self, message: dict[str, Any]) -> None:
        if "id" in message:
            with self._lock:
                pending = self._pending.get(message["id"])
            if pending is not None:
                pending.reply = message
                pending.done.set()
            return
        kind = message.get("type")
        if kind is None:
            with self._lock:
                entry = self._subscriptions.get(message.get("topic", ""))
            if entry is not None:
                entry[0]._deliver(Publication(message["topic"], message.get("offset"), _data(message)))
        elif kind == Push.PING:
            self._send('{"type":"pong"}')
        elif kind in (Push.JOIN, Push.LEAVE):
            with self._lock:
                entry = self._subscriptions.get(message.get("topic", ""))
            if entry is not None and entry[0].on_presence is not None:
                _safely(entry[0].on_presence, message)
        elif kind == Push.REFRESH:
            threading.Thread(target=self._refresh, daemon=True).start()
        elif kind == Push.UNSUBSCRIBED:
            with self._lock:
                entry = self._subscriptions.pop(message.get("topic", ""), None)
            if entry is not None:
                entry[0]._end()
        elif kind == Push.MESSAGE and self.on_message is not None:
            _safely(self.on_message, message.get("data"))

    def _refresh(self) -> None:
        if self.get_token is None:
            return  # the server closes with 4002 at expiry
        try:
            self._request("refresh", token=self.get_token())
        except Exception as exc:
            log.warning("syncws client: token refresh failed: %s", exc)

    def _finish(self, code: int | None, reason: str) -> None:
        if self.closed:
            return
        self.close_code, self.close_reason = code, reason
        self.closed = True
        self._connected.set()  # wake the waiters: they raise ClientClosed
        with self._lock:
            subs = [sub for sub, _ in self._subscriptions.values()]
        for sub in subs:
            sub._end()


def _abort(ws: Any) -> None:
    try:
        ws.socket.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _safely(callback: Callable[[Any], Any], value: object) -> None:
    try:
        callback(value)
    except Exception:
        log.exception("syncws client: a callback failed")


def _data(message: dict[str, Any]) -> Any:
    data = message.get("data")
    if message.get("encoding") == "base64" and isinstance(data, str):
        return base64.b64decode(data)
    return data


def _close_of(exc: BaseException) -> tuple[int | None, str]:
    """The close code and reason the server sent (websockets' ``ConnectionClosed``), else ``(None, text)``."""
    received = getattr(exc, "rcvd", None)
    if received is not None:
        return int(received.code), str(received.reason)
    return None, str(exc)
