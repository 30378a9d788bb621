"""Checking a state machine's TRANSITIONS table (the docs' state diagrams) against the real object."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


class Transitions:
    """The (state before, state after) of every step taken on objects that have a ``state``."""

    def __init__(self) -> None:
        self.seen: set[tuple[Any, Any]] = set()

    def step(self, obj: Any, action: Callable[[Any], object]) -> None:
        before = obj.state
        action(obj)
        self.seen.add((before, obj.state))

    @staticmethod
    def of(table: Iterable[tuple[Any, str, Any]]) -> set[tuple[Any, Any]]:
        """A TRANSITIONS table's (from, to) pairs, what :attr:`seen` must equal."""
        return {(start, end) for start, _, end in table}
