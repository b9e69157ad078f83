"""A gunicorn gateway for the benchmarks: SQLite in a temporary directory, the default model,
and a key whose limits never get in the way."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

from embeddings_site.local_processes import free_port

ROOT = Path(__file__).resolve().parents[1]


class BenchGateway:
    """`with BenchGateway(threads=16) as gw:` → gw.url, gw.key. Without `port`, a free one."""

    def __init__(
        self,
        *,
        workers: int = 1,
        threads: int = 16,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
        self.port = port or free_port()
        self.workers, self.threads = workers, threads
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("DATABASE_URL", "REDIS_URL"))
            },
            "DATA_DIR": str(self.directory),
            "HF_HUB_OFFLINE": "1",
            "USAGE_FLUSH_INTERVAL_SECONDS": "1",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.key = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _manage(self, *args: str) -> str:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def __enter__(self) -> BenchGateway:
        self._manage("migrate", "-v0")
        self._manage("register_models")
        self.key = self._manage(
            "createkey", "--email", "bench@example.com", "--tokens", "100000000000",
            "--rpm", "10000000", "--tpm", "100000000000", "--concurrency", "10000",
        ).split()[-1]  # fmt: skip
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "embeddings_site.wsgi", "--bind", f"127.0.0.1:{self.port}",
             "--worker-class", "gthread", "--workers", str(self.workers), "--threads", str(self.threads),
             "--no-control-socket", "--timeout", "300"],
            cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/ready", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit("the gateway did not become ready")

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}
