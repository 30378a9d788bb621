"""A TCP load balancer and resuming channels clients on one asyncio loop, for the drain test.

:class:`Balancer` is what sits in front of syncws instances in production,
cut to the bone: it accepts on a free port, sends each new connection to
the next backend (round robin) among those whose readiness check answered
200 at the last poll, tries the next when a connect fails, and copies bytes
both ways.  :class:`ResumingClient` speaks the channels protocol the way the
shipped clients do: it reconnects after a 1012 with full-jitter back-off and
subscribes again with the offset of the last publication it received.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time

import websockets
from websockets.typing import Subprotocol

SUBPROTOCOL = "syncws.v1"


class Balancer:
    """Round robin over ``backends`` ((host, port) pairs) that pass ``health_path``, polled every ``interval``.

    As a real load balancer does, a backend that answers anything but 200 is
    out at once, and one that does not answer (a check timed out: a loaded
    host) only after ``misses`` checks in a row.
    """

    def __init__(
        self, backends: list[tuple[str, int]], health_path: str, interval: float = 0.1, misses: int = 3
    ) -> None:
        self.backends = backends
        self.health_path = health_path
        self.interval = interval
        self.misses = misses
        self.ready = dict.fromkeys(backends, True)
        self._missed = dict.fromkeys(backends, 0)  # checks in a row without an answer
        self.routed = dict.fromkeys(backends, 0)  # connections sent to each backend
        self._turn = itertools.count()
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._checker: asyncio.Task | None = None

    async def start(self) -> Balancer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        self._checker = asyncio.create_task(self._check_forever())
        return self

    async def stop(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
        if self._server is not None:
            self._server.close()

    async def _check_forever(self) -> None:
        while True:
            for backend in self.backends:
                answer = await self._check(backend)
                if answer is None:
                    self._missed[backend] += 1
                    if self._missed[backend] >= self.misses:
                        self.ready[backend] = False
                else:
                    self._missed[backend] = 0
                    self.ready[backend] = answer
            await asyncio.sleep(self.interval)

    async def _check(self, backend: tuple[str, int]) -> bool | None:
        """True for a 200, False for another answer, None for no answer."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*backend), 1)
        except (TimeoutError, OSError):
            return None
        try:
            writer.write(f"GET {self.health_path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n".encode())
            line = await asyncio.wait_for(reader.readline(), 1)
            return line.split(b" ")[1:2] == [b"200"]
        except (TimeoutError, OSError, IndexError):
            return None
        finally:
            writer.close()

    def _order(self) -> list[tuple[str, int]]:
        ready = [backend for backend in self.backends if self.ready[backend]] or list(self.backends)
        start = next(self._turn) % len(ready)
        return ready[start:] + ready[:start]

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        for backend in self._order():
            try:
                reader, writer = await asyncio.open_connection(*backend)
            except OSError:
                continue
            self.routed[backend] += 1
            await asyncio.gather(_pipe(client_reader, writer), _pipe(reader, client_writer))
            return
        client_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


class ResumingClient:
    """A channels client of one topic that records what it received, its closes and its resumes."""

    def __init__(self, url: str, topic: str, backoff_base: float = 0.5, backoff_cap: float = 5.0) -> None:
        self.url = url
        self.topic = topic
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.errors: list[str] = []  # what ended a connection other than a close (for the test's messages)
        self.received: list[int] = []  # the "n" of every publication, in arrival order
        self.offset: str | None = None
        self.heard = False
        self.closes: list[tuple[float, int | None]] = []  # (time.monotonic(), close code or None)
        self.resumes: list[bool] = []  # each subscribe's "recovered"
        self.subscribed = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            code = None
            try:
                async with websockets.connect(
                    self.url,
                    subprotocols=[Subprotocol(SUBPROTOCOL)],
                    open_timeout=10,
                    ping_interval=None,
                    max_queue=None,
                ) as ws:
                    attempt = 0 if await self._session(ws) else attempt
                code = ws.close_code
            except (TimeoutError, OSError, websockets.InvalidStatus, websockets.InvalidHandshake) as exc:
                self.errors.append(repr(exc))  # refused or unreachable: back off and try again
            except websockets.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
            except Exception as exc:  # a reply it did not expect: note it, and go on as after a drop
                self.errors.append(repr(exc))
            self.closes.append((time.monotonic(), code))
            if stop.is_set():
                return
            await asyncio.sleep(random.random() * min(self.backoff_cap, self.backoff_base * 2**attempt))
            attempt += 1

    async def _session(self, ws) -> bool:
        await ws.send(json.dumps({"type": "connect", "id": 0, "token": "load"}))
        if "result" not in json.loads(await ws.recv()):
            return False
        subscribe = {"type": "subscribe", "id": 1, "topic": self.topic}
        if self.offset is not None:
            subscribe["since"] = self.offset
        await ws.send(json.dumps(subscribe))
        async for text in ws:
            message = json.loads(text)
            if "offset" in message and "id" not in message and "type" not in message:
                self.received.append(message["data"]["n"])
                self.offset = message["offset"]
                self.heard = True
            elif message.get("id") == 1:
                result = message.get("result")
                if result is None:
                    raise RuntimeError(f"subscribe failed: {message}")
                self.resumes.append(result["recovered"])
                if not self.heard and result.get("offset") is not None:
                    self.offset = result["offset"]
                self.subscribed.set()
            elif message.get("type") == "ping":
                await ws.send('{"type": "pong"}')
        return True
