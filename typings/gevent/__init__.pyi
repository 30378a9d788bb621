from typing import Any

from gevent.greenlet import Greenlet as Greenlet

def __getattr__(name: str) -> Any: ...
