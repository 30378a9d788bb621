"""``from syncws.redis_broker import RedisBroker``: the stable name of :mod:`syncws.pubsub.redis_broker`."""

from .pubsub.redis_broker import RedisBroker

__all__ = ["RedisBroker"]
