"""The echo server that scripts/autobahn and scripts/bench_large test.

    python scripts/autobahn_app.py [--host 127.0.0.1] [--port 0] [--max-message-size BYTES] [--compression deflate]

Every message is sent back to its sender with its own type (text or binary).
Autobahn's 9.x cases send messages of up to 16 MiB and keep up to 1,000 of
them in flight, so both the message limit and the outbound buffer are 64 MiB
by default (the library's defaults are 1 MiB).  Once it listens the server
prints one line, ``syncws-autobahn-echo: listening on ws://HOST:PORT/``, which
the scripts wait for to learn the port.  SIGTERM/SIGINT stop it cleanly.
"""

import argparse
import logging
import os
import sys

# Run from a checkout: import the syncws next to this script, installed or not.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from syncws import App, Server, define_websocket_handler  # noqa: E402

MiB = 1024 * 1024


def echo(peer, message):
    peer.send(message)


app = App()
app.get("/", define_websocket_handler(message=echo))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--max-message-size", type=int, default=64 * MiB)
    parser.add_argument("--max-buffer-size", type=int, default=64 * MiB)
    parser.add_argument("--compression", choices=("deflate",), default=None, help="accept permessage-deflate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    server = Server(
        app,
        args.host,
        args.port,
        access_log=False,
        max_message_size=args.max_message_size,
        max_buffer_size=args.max_buffer_size,
        compression=args.compression,
    )
    server.start()
    print(f"syncws-autobahn-echo: listening on ws://{args.host}:{server.port}/", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
