"""What every layer may use: the exception hierarchy, the option table, an OS lock.

Modules here import only the standard library (and ``gevent.monkey`` for the
real lock); every other package of syncws builds on them.
"""
