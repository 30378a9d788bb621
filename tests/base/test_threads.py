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
