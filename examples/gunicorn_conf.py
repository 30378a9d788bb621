# Run:  SYNCWS_BROKER=redis://127.0.0.1:6379/0 gunicorn -c examples/gunicorn_conf.py examples.chat:app
"""A gunicorn config file for serving a syncws app (here the chat example) with gunicorn.

The same as the command line
``gunicorn -k syncws.gunicorn.Worker -w 4 -b 127.0.0.1:8000 examples.chat:app``.
More than one worker needs a broker for pub/sub between them: set
SYNCWS_BROKER in the environment (or uncomment ``raw_env`` below).
"""

worker_class = "syncws.gunicorn.Worker"
workers = 4
bind = "127.0.0.1:8000"
# A heartbeat, not a request timeout: WebSockets and event streams may stay open for hours.
timeout = 30
# SIGTERM: peers get 1001 (going away) and up to SYNCWS_SHUTDOWN_TIMEOUT (5 s) to close, within this.
graceful_timeout = 10
# raw_env = ["SYNCWS_BROKER=redis://127.0.0.1:6379/0"]
