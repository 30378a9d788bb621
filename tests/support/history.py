"""Clients of ``tests/apps/history_app.py``: WebSocket peers, event streams and its HTTP routes."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlencode

import requests

from .clients import QueuedWebSocket
from .sse import SSEClient

__all__ = ["Peer", "history", "offsets_after", "open_stream", "presence", "publish"]


def _base(target: Any) -> str:
    return target if isinstance(target, str) else target.url


class Peer(QueuedWebSocket):
    """A WebSocket client of ``/ws/<room>``; a reader thread queues what arrives (text as str)."""

    def __init__(self, target: Any, room: str = "a", subs: tuple = (), **query: Any) -> None:
        params = [("sub", topic) for topic in subs] + [(k, v) for k, v in query.items() if v is not None]
        super().__init__(_base(target).replace("http://", "ws://", 1) + f"/ws/{room}?" + urlencode(params))

    def until_open(self) -> tuple[list, dict]:
        """Everything before the open ack (the replay), and the ack."""
        before: list[object] = []
        while True:
            item = self.get()
            if isinstance(item, str) and item.startswith('{"ack":"open"'):
                return before, json.loads(item)
            before.append(item)

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass


def open_stream(target: Any, topics: tuple, ns: str = "/ws/a", last_event_id: str | None = None, **query: Any):
    """An SSEClient on ``/events``; returns (client, events before the recovery event, the recovery results)."""
    params = [("topic", t) for t in topics] + [("ns", ns)] + [(k, v) for k, v in query.items() if v is not None]
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else None
    client = SSEClient(_base(target), "/events?" + urlencode(params), headers=headers)
    before: list[object] = []
    while True:
        event = client.next_event()
        if event.type == "recovery":
            return client, before, json.loads(event.data)
        before.append(event)


def publish(target: Any, topic: str, data: Any, ns: str | None = None) -> None:
    """``server.publish`` through the app (JSON data: a dict, list or number)."""
    form = {"topic": topic, "ns": ns or ""}
    if isinstance(data, bytes):
        form["b64"] = base64.b64encode(data).decode()
    elif isinstance(data, str):
        form["data"] = data
    else:
        form.update(data=json.dumps(data), json="1")
    requests.post(_base(target) + "/publish", data=form, timeout=5).raise_for_status()


def history(target: Any, topic: str, ns: str = "/ws/a", **query: Any) -> list:
    params = {"topic": topic, "ns": ns, **{k: v for k, v in query.items() if v is not None}}
    response = requests.get(_base(target) + "/history", params=params, timeout=10)
    response.raise_for_status()
    return response.json()["entries"]


def presence(target: Any, topic: str, ns: str | None = None) -> dict:
    params = {"topic": topic, **({"ns": ns} if ns else {})}
    response = requests.get(_base(target) + "/presence", params=params, timeout=10)
    response.raise_for_status()
    return response.json()


def offsets_after(entries: list, since: str) -> list:
    """The stored entries after ``since`` (exclusive), from a full history listing."""
    offsets = [offset for offset, _ in entries]
    return entries[offsets.index(since) + 1 :]
