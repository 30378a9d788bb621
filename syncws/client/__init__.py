"""The Python client of the channels protocol (``pip install 'syncws[client]'``).

Plain threads, no gevent: usable from a script, a Celery task, a test or a
thread of any program.  See ``docs/channels.md``.
"""

from .client import Client, Publication, Subscription

__all__ = ["Client", "Publication", "Subscription"]
