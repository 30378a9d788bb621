"""Which broker a server gets: ``serve(broker=...)``, else ``$SYNCWS_BROKER``, else in-process."""

from __future__ import annotations

import os

from ..base.options import BY_NAME
from .broker import Broker, LocalBroker


def make_broker(spec: Broker | str | None) -> Broker:
    """A broker from ``serve(broker=...)``: None, a URL or a Broker instance.

    None falls back to the ``SYNCWS_BROKER`` environment variable, then to
    in-process pub/sub.
    """
    if spec is None:
        spec = os.environ.get(BY_NAME["broker"].env_var) or None
    if spec is None:
        return LocalBroker()
    if isinstance(spec, Broker):
        return spec
    if isinstance(spec, str):
        from .redis_broker import RedisBroker  # here: a process without a broker URL never loads it

        return RedisBroker(spec)  # ConfigurationError for a URL it does not take
    raise TypeError(f"broker must be a URL string or a Broker, not {type(spec).__name__}")
