"""Other people's software: Flask, the gunicorn worker, gevent-websocket apps.

May import any lower layer (base, protocol, pubsub, server, web); nothing
below imports it.  The Flask and gevent-websocket adapters register
themselves with the server layer when :mod:`syncws` is imported.
"""
