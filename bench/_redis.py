"""A private redis-server for a benchmark run (or the one named by --redis-url)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from embeddings_site.local_processes import free_port, wait_for_port


@contextmanager
def private_redis(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found; install it or pass --redis-url")
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                directory,
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port, timeout=4)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait()


class CommandTime:
    """Redis' own time spent in some commands between two points (INFO commandstats deltas,
    so nothing is reset on a shared server). Microseconds per call, as Redis measures it."""

    def __init__(self, client: Any, *commands: str) -> None:
        self.client = client
        self.commands = commands
        self.calls = 0
        self.usec = 0

    def _totals(self) -> tuple[int, int]:
        stats = self.client.info("commandstats")
        found = [stats.get(f"cmdstat_{name}", {}) for name in self.commands]
        return sum(s.get("calls", 0) for s in found), sum(s.get("usec", 0) for s in found)

    @contextmanager
    def measure(self) -> Iterator[None]:
        calls, usec = self._totals()
        yield
        after_calls, after_usec = self._totals()
        self.calls += after_calls - calls
        self.usec += after_usec - usec

    @property
    def usec_per_call(self) -> float:
        return self.usec / self.calls if self.calls else 0.0
