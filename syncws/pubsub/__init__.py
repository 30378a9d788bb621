"""Topics, subscribers and brokers: who gets a publish, locally and across processes.

Imports :mod:`syncws.base` and :mod:`syncws.protocol` only.  The server hands a
broker callbacks (``Broker.start(deliver, interests)``, ``Broker.configure``,
``on_command``, ``on_gap``), never itself.
"""
