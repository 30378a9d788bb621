"""Topics, subscribers and brokers: who gets a publish, locally and across processes.

Imports :mod:`syncws.base` and :mod:`syncws.protocol` only.  The server hands a
broker a narrow :class:`~syncws.pubsub.broker.BrokerLink` (a delivery callback
and the current interests), never itself.
"""
