"""Writing apps: the ``App`` router, ``mount()`` and view return values.

Builds on :mod:`syncws.server` (handlers, event streams) and below.
"""
