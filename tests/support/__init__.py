"""Helpers shared by the test modules, one module per job.

- :mod:`.http`: raw HTTP over bare sockets;
- :mod:`.frames`: client-side WebSocket frames and a blocking driver for the server's parser;
- :mod:`.clients`: WebSocket clients and one-handler apps;
- :mod:`.processes`: ``python -m syncws`` and other server commands in subprocesses;
- :mod:`.redis`: a private redis-server;
- :mod:`.healthy`: the healthy peer the hostile-client tests measure;
- :mod:`.proxy`: a TCP proxy a test can stall or cut.

Fixtures stay in ``conftest.py``; what is here is plain functions and classes.
Everything is re-exported here for the tests' convenience.
"""

from .clients import *  # noqa: F403
from .frames import *  # noqa: F403
from .healthy import *  # noqa: F403
from .http import *  # noqa: F403
from .processes import *  # noqa: F403
from .proxy import *  # noqa: F403
from .redis import *  # noqa: F403
