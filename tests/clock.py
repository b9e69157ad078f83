"""A clock that moves only when a test says so, for code that takes a `clock` callable."""

from __future__ import annotations

# An instant well away from any window edge of a real clock: 2026-01-01 00:00:00 UTC.
START = 1_767_225_600.0


class FakeClock:
    """Seconds since the epoch, as time.time() gives them, frozen until `advance`."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
