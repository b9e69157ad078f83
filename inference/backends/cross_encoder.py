"""In-process CPU cross-encoder: a Hugging Face sequence-classification checkpoint with one label,
scoring (query, document) pairs as sentence-transformers' `CrossEncoder.predict` does (the
sigmoid of the single logit)."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from embeddings_site.deadlines import current_deadline
from inference.backends.base import (
    BackendError,
    BackendHealth,
    BackendTimeout,
    Capability,
    EmbeddingBackend,
    EmbedItem,
)
from inference.backends.scoring import PairItem


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BackendError(
            "The cross-encoder backend needs PyTorch: `pip install torch==2.13.0` (see README)."
        ) from exc
    return torch


def pair_passes(pairs: Sequence[PairItem], max_batch_tokens: int) -> list[list[int]]:
    """Pair indexes in length-sorted groups whose padded size stays within max_batch_tokens."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].token_ids))
    groups: list[list[int]] = []
    current: list[int] = []
    for index in order:
        if current and (len(current) + 1) * len(pairs[index].token_ids) > max_batch_tokens:
            groups.append(current)
            current = []
        current.append(index)
    if current:
        groups.append(current)
    return groups


class CrossEncoderCpuBackend(EmbeddingBackend):
    """Scores pairs with AutoModelForSequenceClassification on the CPU, one pass at a time."""

    capabilities = frozenset({Capability.SCORE_PAIRS})

    def __init__(
        self,
        *,
        model_dir: Path,
        max_batch_tokens: int = 2048,
        num_threads: int = 0,
        max_queued_tokens: int | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.max_batch_tokens = max_batch_tokens
        self.num_threads = num_threads
        # Tokens waiting for (or in) a forward pass before new requests are shed; None: the
        # setting EMBEDDINGS_MAX_QUEUED_TOKENS.
        self.max_queued_tokens = max_queued_tokens
        self._model: Any = None
        self._pad_id = 0
        self._takes_type_ids = False
        # One forward pass at a time: torch already spreads a pass over every core.
        self._lock = threading.Lock()
        self._queued_lock = threading.Lock()
        self._queued_tokens = 0

    def load(self) -> None:
        torch = _import_torch()
        from transformers import AutoModelForSequenceClassification

        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        model = AutoModelForSequenceClassification.from_pretrained(
            str(self.model_dir), dtype=torch.float32
        )
        if model.config.num_labels != 1:
            raise BackendError(
                f"{self.model_dir} has {model.config.num_labels} labels; a reranker has one "
                "(a relevance logit)."
            )
        model.eval()
        self._pad_id = model.config.pad_token_id or 0
        self._takes_type_ids = "token_type_ids" in inspect.signature(model.forward).parameters
        self._model = model

    def health(self) -> BackendHealth:
        if self._model is None:
            return BackendHealth(ok=False, detail="not loaded")
        return BackendHealth(ok=True, detail="cross-encoder loaded on cpu")

    def shed_retry_after(self) -> float | None:
        limit = (
            settings.EMBEDDINGS_MAX_QUEUED_TOKENS
            if self.max_queued_tokens is None
            else self.max_queued_tokens
        )
        return 1.0 if self._queued_tokens >= limit else None

    def embed(self, items: Sequence[EmbedItem]) -> np.ndarray:
        raise BackendError("a cross-encoder scores (query, document) pairs; it makes no vectors")

    def score(self, pairs: Sequence[PairItem]) -> np.ndarray:
        if self._model is None:
            raise BackendError("model not loaded")
        tokens = sum(len(pair.token_ids) for pair in pairs)
        with self._queued_lock:
            self._queued_tokens += tokens
        try:
            return self._score(pairs)
        finally:
            with self._queued_lock:
                self._queued_tokens -= tokens

    def _score(self, pairs: Sequence[PairItem]) -> np.ndarray:
        deadline = current_deadline()
        scores = np.zeros(len(pairs), dtype=np.float32)
        for group in pair_passes(pairs, self.max_batch_tokens):
            if deadline is not None and deadline.expired:
                raise BackendTimeout("the deadline passed between forward passes")
            scores[group] = self._forward([pairs[i] for i in group])
        return scores

    def _forward(self, batch: list[PairItem]) -> np.ndarray:
        torch = _import_torch()
        longest = max(len(pair.token_ids) for pair in batch)
        input_ids = torch.full((len(batch), longest), self._pad_id, dtype=torch.long)
        type_ids = torch.zeros((len(batch), longest), dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, pair in enumerate(batch):
            length = len(pair.token_ids)
            input_ids[row, :length] = torch.tensor(pair.token_ids, dtype=torch.long)
            type_ids[row, :length] = torch.tensor(pair.type_ids, dtype=torch.long)
            mask[row, :length] = 1
        inputs = {"input_ids": input_ids, "attention_mask": mask}
        if self._takes_type_ids:
            inputs["token_type_ids"] = type_ids
        with self._lock, torch.inference_mode():
            try:
                logits = self._model(**inputs).logits
            except (RuntimeError, IndexError, ValueError) as exc:
                raise BackendError(f"forward pass failed: {exc}") from exc
            return torch.sigmoid(logits[:, 0]).float().numpy()
