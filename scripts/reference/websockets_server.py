"""The asyncio reference: the websockets library's server, no compression.

    python scripts/reference/websockets_server.py PORT

``/fanout?role=sub|pub``: subscribers join a set and every publisher message
goes to them with ``websockets.broadcast`` (the library's fan-out: one frame,
written without waiting); any other path echoes.
"""

import asyncio
import resource
import sys
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import broadcast, serve

subscribers: set = set()


async def fanout(connection, role: str) -> None:
    if role == "sub":
        subscribers.add(connection)
    await connection.send("ready")
    try:
        async for message in connection:
            broadcast(subscribers, message)
    finally:
        subscribers.discard(connection)


async def handler(connection):
    url = urlsplit(connection.request.path)
    if url.path == "/fanout":
        await fanout(connection, parse_qs(url.query).get("role", ["sub"])[0])
        return
    async for message in connection:
        await connection.send(message)


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=2**25):
        await asyncio.Future()


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main(int(sys.argv[1])))
