"""``gunicorn -k syncws.gunicorn.Worker``: the stable name of :mod:`syncws.integrations.gunicorn`."""

from .integrations.gunicorn import Worker

__all__ = ["Worker"]
