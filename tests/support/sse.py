"""A WHATWG ``text/event-stream`` parser, the way ``EventSource`` reads a stream."""

from __future__ import annotations

import codecs
import http.client
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class SSEEvent:
    """What ``EventSource`` dispatches: ``event.type``, ``event.data``, ``event.lastEventId``."""

    type: str
    data: str
    last_event_id: str


_EOL = re.compile(r"\r\n|\r|\n")


class SSEParser:
    """The event-stream interpretation of the HTML standard (§9.2.6), incrementally.

    Bytes are decoded as UTF-8 (a leading BOM is dropped); lines end at CRLF,
    LF or CR; ``:`` starts a comment (kept in :attr:`comments` for the tests);
    ``field: value`` with one leading space removed; ``event``, ``data``,
    ``id`` (ignored if it contains NUL) and ``retry`` (ASCII digits only) are
    the only fields; a blank line dispatches, unless the data buffer is empty.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._started = False
        self._data: list[str] = []
        self._event_type = ""
        self._last_event_id_buffer = ""
        self.last_event_id = ""
        self.retry: int | None = None
        self.events: list[SSEEvent] = []
        self.comments: list[str] = []

    def feed(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        self._buffer += text
        buf, pos = self._buffer, 0
        while True:
            match = _EOL.search(buf, pos)
            if match is None:
                break
            if match.group() == "\r" and match.end() == len(buf):
                break  # may be the first half of a CRLF split across reads
            self._line(buf[pos : match.start()])
            pos = match.end()
        self._buffer = buf[pos:]

    def _line(self, line: str) -> None:
        if line == "":
            self._dispatch()
            return
        if line.startswith(":"):
            comment = line[1:]
            self.comments.append(comment[1:] if comment.startswith(" ") else comment)
            return
        if ":" in line:
            field, value = line.split(":", 1)
            if value.startswith(" "):
                value = value[1:]
        else:
            field, value = line, ""
        if field == "event":
            self._event_type = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            if "\0" not in value:
                self._last_event_id_buffer = value
        elif field == "retry":
            if value and all(c in "0123456789" for c in value):
                self.retry = int(value)
        # any other field is ignored

    def _dispatch(self) -> None:
        self.last_event_id = self._last_event_id_buffer
        if not self._data:
            self._event_type = ""
            return
        event = SSEEvent(self._event_type or "message", "\n".join(self._data), self.last_event_id)
        self._data = []
        self._event_type = ""
        self.events.append(event)


def parse(data: bytes) -> SSEParser:
    parser = SSEParser()
    parser.feed(data)
    return parser


# -- an SSE client over http.client ---------------------------------------------


class SSEClient:
    """``GET`` an event stream with http.client and parse it as it arrives."""

    def __init__(self, server, path: str = "/sse", headers: dict | None = None, timeout: float = 5.0) -> None:
        """``server``: anything with a ``port`` (a Server), or a base URL ``http://host:port``."""
        port = server.port if hasattr(server, "port") else int(server.rsplit(":", 1)[1])
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        all_headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        all_headers.update(headers or {})
        self.conn.request("GET", path, headers=all_headers)
        self.sock = self.conn.sock
        self.response = self.conn.getresponse()
        self.parser = SSEParser()
        self.raw = bytearray()  # the body as received (de-chunked)
        self.eof = False
        self._seen = 0

    @property
    def status(self) -> int:
        return self.response.status

    def header(self, name: str) -> str | None:
        return self.response.getheader(name)

    @property
    def events(self) -> list[SSEEvent]:
        return self.parser.events

    def _read(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        chunk = self.response.read1(65536)
        if not chunk:
            self.eof = True
            return
        self.raw += chunk
        self.parser.feed(chunk)

    def read_until(self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.eof:
                raise AssertionError(f"stream ended while waiting for {what or predicate}; got {bytes(self.raw)!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what or predicate}; got {bytes(self.raw)!r}")
            try:
                self._read(remaining)
            except TimeoutError:
                raise AssertionError(f"timed out waiting for {what or predicate}; got {bytes(self.raw)!r}") from None

    def next_event(self, timeout: float = 5.0) -> SSEEvent:
        self.read_until(lambda: len(self.parser.events) > self._seen, timeout, "an event")
        event = self.parser.events[self._seen]
        self._seen += 1
        return event

    def next_events(self, count: int, timeout: float = 5.0) -> list[SSEEvent]:
        return [self.next_event(timeout) for _ in range(count)]

    def wait_eof(self, timeout: float = 5.0) -> None:
        self.read_until(lambda: self.eof, timeout, "the end of the stream")

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.response.close()
        self.conn.close()

    def __enter__(self) -> SSEClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
