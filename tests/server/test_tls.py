"""TLS in the server: wss:// and https:// event streams with certificates the tests make (trustme)."""

from __future__ import annotations

import logging
import socket
import ssl
import time

import pytest
import requests
import trustme
import websocket

from syncws import App, ConfigurationError, create_event_stream, define_websocket_handler, serve

from ..conftest import wait_until


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def cert_files(ca, tmp_path_factory):
    """(certfile, keyfile, ca bundle) for 127.0.0.1 and localhost."""
    folder = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, bundle = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(certfile)
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(certfile, append=True)
    cert.private_key_pem.write_to_path(keyfile)
    ca.cert_pem.write_to_path(bundle)
    return str(certfile), str(keyfile), str(bundle)


def tls_app() -> App:
    app = App()
    app.get("/_ws", define_websocket_handler(message=lambda peer, msg: peer.send(f"{peer.websocket.url} {msg}")))
    app.get("/", lambda request: f"scheme {request.scheme}")

    @app.get("/sse")
    def sse(request):
        stream = create_event_stream(request, keep_alive=None)
        stream.push("secure event")
        stream.close()
        return stream

    return app


@pytest.fixture
def tls_server(start_server, cert_files):
    certfile, keyfile, _ = cert_files
    return start_server(tls_app(), certfile=certfile, keyfile=keyfile, handshake_timeout=1.0)


def test_wss_and_https_with_a_trusted_certificate(tls_server, cert_files):
    bundle = cert_files[2]
    assert tls_server.url.startswith("https://")
    assert requests.get(tls_server.url + "/", verify=bundle, timeout=5).text == "scheme https"
    events = requests.get(tls_server.url + "/sse", verify=bundle, timeout=5)
    assert events.headers["Content-Type"] == "text/event-stream" and "data: secure event" in events.text
    client = websocket.create_connection(
        tls_server.url.replace("https", "wss") + "/_ws", sslopt={"ca_certs": bundle}, timeout=5
    )
    try:
        client.send("hello")
        assert client.recv() == f"wss://127.0.0.1:{tls_server.port}/_ws hello"
    finally:
        client.close()


def test_an_untrusted_certificate_is_refused_by_a_verifying_client(tls_server):
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(tls_server.url + "/", timeout=5)  # the system's CAs do not know the test CA


def test_a_tls_client_that_never_finishes_its_handshake_is_dropped(tls_server):
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server...
        assert time.monotonic() - started < 4  # ...after handshake_timeout (1 s), not never


@pytest.mark.slow
def test_a_client_hello_trickled_a_byte_at_a_time_is_dropped_at_the_handshake_timeout(tls_server):
    # Each read was bounded, not the handshake: one byte every 0.5 s (under
    # the 1 s timeout) kept the connection open for as long as the client liked.
    hello = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = hello.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    client_hello = outgoing.read()
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as sock:
        started = time.monotonic()
        try:
            for byte in client_hello:
                sock.sendall(bytes([byte]))
                time.sleep(0.5)
                if time.monotonic() - started > 6:
                    break
        except OSError:
            pass  # reset by the server: what we want
        sock.settimeout(1)
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 3  # handshake_timeout (1 s) for the whole handshake


def test_plain_http_on_the_tls_port_is_closed_cleanly(tls_server, cert_files):
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = sock.recv(100)
        except ConnectionResetError:
            answer = b""
        assert not answer.startswith(b"HTTP/")  # no plain-text answer on a TLS port
    # and the server goes on serving TLS clients
    assert requests.get(tls_server.url + "/", verify=cert_files[2], timeout=5).status_code == 200


def test_an_ssl_context_can_be_given(start_server, cert_files):
    from gevent import ssl as gevent_ssl

    certfile, keyfile, bundle = cert_files
    context = gevent_ssl.SSLContext(gevent_ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    server = start_server(tls_app(), ssl_context=context)
    assert requests.get(server.url + "/", verify=bundle, timeout=5).text == "scheme https"


def test_bad_tls_settings_are_configuration_errors(cert_files, tmp_path):
    certfile, keyfile, _ = cert_files
    with pytest.raises(ConfigurationError, match="keyfile needs a certfile"):
        serve(App(), port=0, background=True, keyfile=keyfile)
    with pytest.raises(ConfigurationError, match="cannot load the TLS certificate"):
        serve(App(), port=0, background=True, certfile=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigurationError, match="not both"):
        serve(App(), port=0, background=True, certfile=certfile, ssl_context=ssl.create_default_context())


def test_many_handshakes_in_parallel_do_not_block_each_other(tls_server, cert_files):
    """A stalled TLS client holds only its own greenlet."""
    stalled = [socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) for _ in range(5)]
    try:
        assert wait_until(
            lambda: requests.get(tls_server.url + "/", verify=cert_files[2], timeout=5).status_code == 200
        )
    finally:
        for sock in stalled:
            sock.close()


def test_only_a_plain_gevent_socket_is_read_and_written_past_gevent(cert_files):
    """The outbox's non-blocking send and the session's recv skip gevent's wrapper: never under TLS.

    On a TLS socket the socket underneath would carry our bytes unencrypted.
    """
    import _socket

    import gevent.socket
    from gevent import ssl as gevent_ssl

    from syncws.server.outbox import raw_socket

    certfile, keyfile, _ = cert_files
    context = gevent_ssl.SSLContext(gevent_ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    plain, other = gevent.socket.socketpair()
    wrapped = context.wrap_socket(plain, server_side=True, do_handshake_on_connect=False)
    stdlib = socket.socket()
    try:
        assert raw_socket(wrapped) is None
        assert raw_socket(stdlib) is None
        raw = raw_socket(other)
        assert isinstance(raw, _socket.socket) and raw.fileno() == other.fileno()
    finally:
        for sock in (wrapped, other, stdlib):
            sock.close()


def test_a_tls_client_that_reads_slowly_gets_every_byte_and_nothing_is_logged(start_server, cert_files, caplog):
    """The flusher writes from a hub callback, where gevent's TLS send would wait (and raise).

    Before, the frames taken for that write were lost and the peer stalled:
    2.9 of 10 MB arrived, with a BlockingSwitchOutError logged per flush.
    """
    certfile, keyfile, bundle = cert_files
    peers: list = []
    app = App()
    app.get("/_ws", define_websocket_handler(open=peers.append))
    server = start_server(app, certfile=certfile, keyfile=keyfile, max_buffer_size=64 * 1024 * 1024)
    client = websocket.create_connection(
        server.url.replace("https", "wss") + "/_ws",
        sslopt={"ca_certs": bundle},
        sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)],
        timeout=10,
    )
    try:
        assert wait_until(lambda: peers)
        messages = [bytes([n]) * 100_000 for n in range(100)]
        for message in messages:
            assert peers[0].send(message)
        assert wait_until(lambda: peers[0].buffered_amount > 1_000_000)  # the client is not reading yet
        received = [client.recv() for _ in messages]
        assert received == messages
    finally:
        client.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
