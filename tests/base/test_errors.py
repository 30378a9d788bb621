"""One exception hierarchy: everything syncws raises on purpose is a SyncwsError."""

from __future__ import annotations

import errno
import inspect

import syncws
from syncws.base import errors
from syncws.compat import WebSocketError
from syncws.server.streams import NoTransportError


def test_every_exception_class_of_the_module_is_a_syncws_error():
    classes = [obj for _, obj in inspect.getmembers(errors, inspect.isclass) if issubclass(obj, BaseException)]
    assert len(classes) >= 10
    for cls in classes:
        assert issubclass(cls, errors.SyncwsError), cls
        assert getattr(syncws, cls.__name__) is cls  # importable from syncws
    # the docstring's tree names every class
    for cls in classes:
        assert cls.__name__ in errors.__doc__


def test_the_classes_that_join_from_elsewhere():
    import geventwebsocket.exceptions

    assert issubclass(WebSocketError, errors.SyncwsError)
    assert issubclass(WebSocketError, geventwebsocket.exceptions.WebSocketError)
    assert issubclass(NoTransportError, errors.SyncwsError) and issubclass(NoTransportError, RuntimeError)
    from werkzeug.exceptions import HTTPException

    assert issubclass(syncws.ConnectionLimitError, errors.SyncwsError)
    assert issubclass(syncws.ConnectionLimitError, HTTPException)
    assert syncws.ConnectionLimitError(429).code == 429


def test_standard_bases_keep_old_except_clauses_working():
    assert issubclass(errors.ClientClosed, ConnectionError)
    assert issubclass(errors.ConfigurationError, ValueError)
    assert issubclass(errors.ServerNotRunning, RuntimeError)
    assert issubclass(errors.DependencyMissing, RuntimeError)
    assert issubclass(errors.ListenError, OSError)
    assert issubclass(errors.BrokerError, ConnectionError)


def test_http_errors_carry_status_message_and_headers():
    error = errors.HandshakeError(405, "use GET", [("Allow", "GET")])
    assert isinstance(error, errors.HTTPError)
    assert (error.status, error.message, error.headers, str(error)) == (405, "use GET", [("Allow", "GET")], "use GET")
    assert errors.RequestHeadError(431, "too many").headers == []


def test_protocol_and_listen_errors():
    error = errors.ProtocolError(1009, "message exceeds 10 bytes")
    assert (error.code, error.reason, str(error)) == (1009, "message exceeds 10 bytes", "message exceeds 10 bytes")
    cause = OSError(errno.EADDRINUSE, "Address already in use")
    listen = errors.ListenError("127.0.0.1", 3000, cause)
    assert str(listen) == (
        "cannot listen on 127.0.0.1:3000: Address already in use; another program has that port: "
        "pick another (--port, or serve(port=...)) or stop it"
    )
    assert listen.errno == errno.EADDRINUSE
    other = errors.ListenError("0.0.0.0", 80, OSError(errno.EACCES, "Permission denied"))
    assert str(other) == "cannot listen on 0.0.0.0:80: Permission denied"  # the port hint only where it helps


def test_the_channels_errors_carry_what_the_client_is_told():
    assert errors.Refused("members only").reason == "members only"
    failure = errors.RPCError("no_room", "there is no such room")
    assert (failure.code, failure.message, str(failure)) == (
        "no_room",
        "there is no such room",
        "no_room: there is no such room",
    )
    assert str(errors.RPCError("gone")) == "gone"
    failed = errors.RequestFailed("forbidden", "subscribe refused")
    assert (failed.code, failed.message) == ("forbidden", "subscribe refused")
    closed = errors.ClientClosed(4003, "banned")
    assert (closed.code, closed.reason) == (4003, "banned") and "4003: banned" in str(closed)
    assert str(errors.ClientClosed(None, "")) == "the client is closed"
