"""The gevent layer: sockets, greenlets and timers around the sans-I/O protocol.

Imports :mod:`syncws.base`, :mod:`syncws.protocol` and :mod:`syncws.pubsub`;
nothing above it (web, integrations, cli).
"""
