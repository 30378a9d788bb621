"""OS threads and logging from them, in patched and unpatched processes."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

from syncws.base.threads import ThreadLog, monkey_patched

# A monkey-patched process: a record logged from gevent's thread pool goes to
# the hand-off (to be logged by the hub), formatted, with its traceback; the
# thread never touches logging's (gevent) locks.
PATCHED = textwrap.dedent(
    """
    import gevent.monkey

    gevent.monkey.patch_all()

    import logging
    import gevent
    from syncws.base.threads import ThreadLog

    handed = []
    log = ThreadLog(logging.getLogger("t"))
    log.hand_off = lambda fn: handed.append(fn) or True


    def in_thread():
        log.warning("read %s failed: %s", "history", "boom")
        try:
            raise ValueError("inside")
        except ValueError:
            log.exception("crashed")


    gevent.get_hub().threadpool.apply(in_thread)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for fn in handed:
        fn()  # what the hub does
    """
)


def test_in_a_patched_process_records_are_handed_to_the_hub():
    result = subprocess.run([sys.executable, "-c", PATCHED], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "WARNING read history failed: boom" in result.stderr
    assert "ERROR crashed" in result.stderr and "ValueError: inside" in result.stderr


def test_unpatched_or_without_a_hub_it_logs_at_once(caplog):
    assert not monkey_patched()
    log = ThreadLog(logging.getLogger("syncws.test"))
    handed = []
    log.hand_off = lambda fn: handed.append(fn) or True
    with caplog.at_level(logging.INFO, logger="syncws.test"):
        log.info("hello %d", 1)
    assert handed == [] and caplog.records[-1].getMessage() == "hello 1"


# -- hand-offs: one outcome box, one reply ------------------------------------------------------
def test_a_reply_carries_a_value_or_an_exception_across_threads():
    import threading

    from syncws.base.threads import Raised, Reply, Returned, capture

    reply: Reply[int] = Reply()
    threading.Thread(target=reply.run, args=(lambda a, b: a + b, 2, 3)).start()
    assert reply.wait(5) == 5

    failing: Reply[int] = Reply()
    threading.Thread(target=failing.run, args=(int, "x")).start()
    try:
        failing.wait(5)
    except ValueError as exc:
        assert "invalid literal" in str(exc)
    else:
        raise AssertionError("the exception did not cross")

    assert capture(len, "abc") == Returned(3)
    outcome = capture(int, "x")
    assert isinstance(outcome, Raised) and isinstance(outcome.error, ValueError)


def test_a_reply_nobody_sets_times_out():
    from syncws.base.threads import Reply

    try:
        Reply().wait(0.05)
    except TimeoutError:
        pass
    else:
        raise AssertionError("waited for nothing")


# -- hub-thread contracts (SYNCWS_DEBUG) ------------------------------------------------------
# A hook in the thread pool that calls a hub-only method directly (Peer.deliver, which
# fan-out calls in the hub) fails with AssertionError in debug mode: the error hook
# sees it and the violation is recorded.  Without SYNCWS_DEBUG, the method is not wrapped.
HUB_ONLY = textwrap.dedent(
    """
    import websocket
    from syncws import App, define_websocket_handler, serve
    from syncws.base import threads
    from syncws.protocol.payload import Outgoing

    errors = []
    app = App()
    app.get(
        "/ws",
        define_websocket_handler(
            message=lambda peer, message: peer.deliver(Outgoing("wrong thread")),
            error=lambda peer, error: errors.append(repr(error)),
        ),
    )

    server = serve(app, host="127.0.0.1", port=0, background=True, threads="on", access_log=False)
    client = websocket.create_connection(server.url.replace("http", "ws") + "/ws", timeout=5)
    client.send("go")
    import time
    deadline = time.monotonic() + 5
    while not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    client.close()
    server.stop(timeout=2)
    print(threads.DEBUG, errors, threads.hub_violations)
    """
)


def _run_hub_only(debug: str) -> str:
    import os

    env = {**os.environ, "SYNCWS_DEBUG": debug}
    done = subprocess.run([sys.executable, "-c", HUB_ONLY], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_in_debug_mode_a_hub_only_method_called_from_a_pool_thread_fails():
    out = _run_hub_only("1")
    assert out.startswith("True ")
    assert "AssertionError('syncws: hub thread only: Peer.deliver called from" in out
    assert "['Peer.deliver called from" in out


def test_without_debug_mode_hub_only_costs_nothing():
    script = "from syncws.server.outbox import Outbox; print(hasattr(Outbox.put, '__wrapped__'))"
    for debug, wrapped in (("0", "False"), ("1", "True")):
        import os

        env = {**os.environ, "SYNCWS_DEBUG": debug}
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
        assert done.stdout.strip() == wrapped, done.stderr
