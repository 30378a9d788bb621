"""permessage-deflate over real sockets: negotiation, both directions, limits, publish once."""

from __future__ import annotations

import json
import os
import queue
import zlib

import pytest
from websockets.sync.client import connect as ws_connect

from syncws import define_websocket_handler
from syncws.protocol import OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT, encode_frame
from syncws.protocol import payload as payload_module

from ..conftest import ws_url
from ..support import RawClient, app_with, http_exchange, parse_response, upgrade_request

OFFER = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
TAIL = b"\x00\x00\xff\xff"
DOCUMENT = {"rows": [{"id": i, "name": f"row {i}", "tags": ["alpha", "beta"]} for i in range(40)]}


def echo_app(**options):
    return app_with(handler=define_websocket_handler(message=lambda peer, message: peer.send(message), **options))


def client_compressed(payload: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def send_compressed(raw: RawClient, opcode: int, payload: bytes) -> None:
    raw.sock.sendall(encode_frame(opcode, client_compressed(payload), mask=os.urandom(4), rsv1=True))


def inflate(data: bytes, bits: int = 12) -> bytes:
    return zlib.decompressobj(-bits).decompress(data + TAIL)


def header_of(raw: RawClient, name: str) -> str | None:
    _, headers, _ = parse_response(raw.head + b"\r\n\r\n")
    return headers.get(name.lower())


def test_a_websockets_client_negotiates_and_messages_go_both_ways(start_server):
    server = start_server(echo_app(), compression="deflate")
    with ws_connect(ws_url(server), compression="deflate") as client:
        agreed = client.response.headers["Sec-WebSocket-Extensions"]
        assert agreed.startswith("permessage-deflate") and "server_no_context_takeover" in agreed
        text = json.dumps(DOCUMENT)
        for _ in range(3):
            client.send(text)
            assert client.recv(timeout=5) == text
        client.send(b"\x00" * 10_000)
        assert client.recv(timeout=5) == b"\x00" * 10_000


def test_the_wire_carries_compressed_frames_both_ways(start_server):
    server = start_server(echo_app(), compression="deflate")
    text = json.dumps(DOCUMENT).encode()
    with RawClient(server, extra=OFFER) as raw:
        agreed = header_of(raw, "Sec-WebSocket-Extensions")
        assert agreed == (
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; client_max_window_bits=12"
        )
        send_compressed(raw, OP_TEXT, text)
        first, payload = raw.read_raw_frame()
        assert first == 0xC1  # FIN + RSV1 + text
        assert len(payload) < len(text) / 3
        assert inflate(payload) == text
        raw.send_frame(OP_TEXT, b"short")  # an uncompressed message on the same connection
        assert raw.read_raw_frame() == (0x81, b"short")  # under the threshold: sent as it is


def test_without_the_option_the_offer_is_ignored_and_rsv1_is_a_protocol_error(start_server):
    server = start_server(echo_app())
    with RawClient(server, extra=OFFER) as raw:
        assert header_of(raw, "Sec-WebSocket-Extensions") is None
        send_compressed(raw, OP_TEXT, b"compressed without agreement")
        opcode, payload = raw.read_frame()
        assert opcode == OP_CLOSE and int.from_bytes(payload[:2], "big") == 1002


def test_a_handler_can_turn_compression_on_for_its_connections(start_server):
    server = start_server(echo_app(compression="deflate"))
    with RawClient(server, extra=OFFER) as raw:
        assert header_of(raw, "Sec-WebSocket-Extensions").startswith("permessage-deflate")


def test_a_malformed_extensions_header_is_400_and_an_unacceptable_offer_is_declined(start_server):
    server = start_server(echo_app(), compression="deflate")
    bad = http_exchange(server, upgrade_request(extra="Sec-WebSocket-Extensions: permessage-deflate; =x\r\n"))
    assert parse_response(bad)[0] == 400
    with RawClient(server, extra="Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=8\r\n") as raw:
        assert header_of(raw, "Sec-WebSocket-Extensions") is None  # declined: plain WebSocket
        raw.send_frame(OP_TEXT, b"still works")
        assert raw.read_frame() == (OP_TEXT, b"still works")


def test_a_decompression_bomb_is_closed_with_1009(start_server):
    server = start_server(echo_app(), compression="deflate", max_message_size=1024 * 1024)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 20)
    bomb = b"".join(compressor.compress(zeros) for _ in range(64)) + compressor.flush(zlib.Z_SYNC_FLUSH)[:-4]
    with RawClient(server, extra=OFFER) as raw:
        raw.sock.sendall(encode_frame(OP_BINARY, bomb, mask=os.urandom(4), rsv1=True))
        opcode, payload = raw.read_frame()
        assert opcode == OP_CLOSE and int.from_bytes(payload[:2], "big") == 1009


def test_compress_false_sends_a_large_message_as_it_is(start_server):
    big = "not compressed on purpose " * 40
    app = app_with(handler=define_websocket_handler(open=lambda peer: peer.send(big, compress=False)))
    server = start_server(app, compression="deflate")
    with RawClient(server, extra=OFFER) as raw:
        assert raw.read_raw_frame() == (0x81, big.encode())


def test_a_publish_is_compressed_once_for_every_subscriber(start_server, monkeypatch):
    calls: list = []
    original = payload_module.compress

    def counting(data, bits, *args):
        calls.append(bits)
        return original(data, bits, *args)

    monkeypatch.setattr(payload_module, "compress", counting)
    ready: queue.Queue = queue.Queue()
    app = app_with(handler=define_websocket_handler(open=lambda peer: (peer.subscribe("feed"), ready.put(peer))))
    server = start_server(app, compression="deflate")
    clients = [RawClient(server, extra=OFFER) for _ in range(3)]
    plain = RawClient(server)  # no offer: gets the plain frame
    for _ in range(4):
        ready.get(timeout=5)
    message = json.dumps(DOCUMENT)
    server.publish("feed", message)
    for raw in clients:
        first, payload = raw.read_raw_frame()
        assert first == 0xC1 and inflate(payload) == message.encode()
    assert plain.read_raw_frame() == (0x81, message.encode())
    assert calls == [12]
    for raw in [*clients, plain]:
        raw.close()


def test_a_ping_with_rsv1_is_refused_on_a_compressing_connection(start_server):
    server = start_server(echo_app(), compression="deflate")
    with RawClient(server, extra=OFFER) as raw:
        raw.sock.sendall(encode_frame(OP_PING, b"", mask=os.urandom(4), rsv1=True))
        opcode, payload = raw.read_frame()
        assert opcode == OP_CLOSE and int.from_bytes(payload[:2], "big") == 1002


@pytest.mark.parametrize("bad", ["inflate", 1, True])
def test_a_bad_compression_option_is_refused(bad):
    from syncws import ConfigurationError

    with pytest.raises(ConfigurationError):
        define_websocket_handler(message=lambda peer, message: None, compression=bad)
