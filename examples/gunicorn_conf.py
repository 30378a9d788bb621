# Run:  SYNCWS_BROKER=redis://127.0.0.1:6379/0 gunicorn -c examples/gunicorn_conf.py examples.chat:app
"""A gunicorn config file for serving a syncws app (here the chat example) with gunicorn.

The same as the command line
``gunicorn -k syncws.gunicorn.Worker -w 4 -b 127.0.0.1:8000 examples.chat:app``.
More than one worker needs a broker for pub/sub between them: set
SYNCWS_BROKER in the environment (or uncomment ``raw_env`` below); without one
the workers refuse to boot and gunicorn says so.
"""

worker_class = "syncws.gunicorn.Worker"
workers = 4
bind = "127.0.0.1:8000"
# A heartbeat, not a request timeout: WebSockets and event streams may stay open for hours.
timeout = 30
# SIGTERM: peers get 1001 (going away) and up to SYNCWS_SHUTDOWN_TIMEOUT (5 s) to close, within this.
graceful_timeout = 10
# raw_env = ["SYNCWS_BROKER=redis://127.0.0.1:6379/0"]
# Metrics: SYNCWS_METRICS=127.0.0.1:9100 and, with more than one worker,
# PROMETHEUS_MULTIPROC_DIR=<an empty directory> in the environment (docs/operations.md).


def child_exit(server, worker):
    """A worker ended: its connection gauges stop counting (prometheus_client's multiprocess mode)."""
    import os

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
