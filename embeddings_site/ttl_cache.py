"""A small per-process cache whose entries expire: for rows read on every request that change
rarely (active keys, registry models)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class TtlCache(Generic[V]):
    """Values by key for a number of seconds each; bounded (when full it starts again empty)."""

    def __init__(self, *, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.clock = clock  # seconds; a test's own clock moves entries past their time
        self._entries: dict[str, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> V | None:
        """The value if it is there and fresh, else None."""
        entry = self._entries.get(key)
        if entry is None or entry[0] < self.clock():
            return None
        return entry[1]

    def put(self, key: str, value: V, *, seconds: float) -> None:
        """Keep a value for `seconds`."""
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (self.clock() + seconds, value)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()
