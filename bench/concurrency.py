"""P4: 32 concurrent clients sending one text each / one client sending 32-text batches.

Both through the same gunicorn gateway (the CPU model, SQLite), texts per second, alternating
rounds. With dynamic batching the gateway coalesces the one-text requests into batches.

Run: `.venv/bin/python -m bench.concurrency`
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from bench._gateway import BenchGateway

P4_GOAL = 0.8
TEXTS = [
    f"Sentence {i}: embeddings turn text into vectors that can be compared." for i in range(32)
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=640, help="one-text requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the gateway")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn worker processes")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    with BenchGateway(workers=args.workers, threads=48, env=env) as gateway:
        url = f"{gateway.url}/v1/embeddings"
        client = httpx.Client(
            timeout=120, headers=gateway.headers, limits=httpx.Limits(max_connections=64)
        )

        def send(texts: list[str]) -> None:
            client.post(url, json={"input": texts, "encoding_format": "base64"}).raise_for_status()

        def concurrent_singles() -> float:
            started = time.perf_counter()
            with ThreadPoolExecutor(32) as pool:
                list(pool.map(lambda i: send([TEXTS[i % 32]]), range(args.requests)))
            return args.requests / (time.perf_counter() - started)

        def one_client_batches() -> float:
            batches = args.requests // 32
            started = time.perf_counter()
            for _ in range(batches):
                send(TEXTS)
            return batches * 32 / (time.perf_counter() - started)

        concurrent_singles()
        one_client_batches()
        ratios, singles, batches = [], [], []
        for _ in range(args.rounds):
            s, b = concurrent_singles(), one_client_batches()
            singles.append(s)
            batches.append(b)
            ratios.append(s / b)
        ratio = statistics.median(ratios)
        print(f"P4 32 clients x 1 text: {statistics.median(singles):,.0f} texts/s; "
              f"1 client x 32-text batches: {statistics.median(batches):,.0f} texts/s")  # fmt: skip
        print(f"   ratio = {ratio:.2f} (per round {', '.join(f'{r:.2f}' for r in ratios)}; goal >= {P4_GOAL}: "
              f"{'meets' if ratio >= P4_GOAL else 'misses'})")  # fmt: skip


if __name__ == "__main__":
    main()
