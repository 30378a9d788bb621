"""A TCP proxy on 127.0.0.1 that a test controls: stall its connections, or drop them."""

from __future__ import annotations

import socket
import threading

__all__ = ["StallingProxy"]


class StallingProxy:
    """A TCP proxy to Redis that can silently stop forwarding on its current connections.

    ``stall()`` freezes every connection open at that moment: bytes are no
    longer passed on either way, yet nothing is closed, as with a dead peer
    behind a NAT.  New connections are forwarded normally, unless
    ``blackhole`` is set: then they are accepted and frozen from the start.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.gates: list = []
        self.sockets: list = []
        self.closed = False
        self.blackhole = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # nothing listens there (a server being restarted): refuse this one
                conn.close()
                continue
            gate = threading.Event()
            if not self.blackhole:
                gate.set()
            self.gates.append(gate)
            self.sockets += [conn, upstream]
            self.accepted += 1
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(src, dst, gate), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, gate: threading.Event) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                gate.wait()
                if self.closed:
                    break
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def stall(self) -> None:
        for gate in self.gates:
            gate.clear()

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        for gate in self.gates:
            gate.set()
        for sock in self.sockets:
            try:
                sock.close()
            except OSError:
                pass

    def drop(self) -> None:
        """Cut every connection open now, at once, as a network failure would (new ones still pass)."""
        sockets, self.sockets = self.sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
