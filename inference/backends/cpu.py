"""In-process CPU backend: a transformers encoder run with torch, pooled as sentence-transformers does."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from embeddings_site.deadlines import current_deadline
from embeddings_site.metrics import BATCH_ITEMS
from inference.backends.base import (
    BackendError,
    BackendHealth,
    BackendTimeout,
    EmbeddingBackend,
    EmbedItem,
)
from inference.backends.batching import DynamicBatcher, checked_rows, token_budget_passes


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BackendError(
            "The CPU backend needs PyTorch: `pip install torch==2.13.0` (see README)."
        ) from exc
    return torch


def padded_batch(batch: Sequence[EmbedItem], pad_id: int) -> tuple[Any, Any]:
    """Token ids right-padded to the longest item, and the attention mask that says where."""
    torch = _import_torch()
    longest = max(len(item.token_ids) for item in batch)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for row, item in enumerate(batch):
        input_ids[row, : len(item.token_ids)] = torch.tensor(item.token_ids, dtype=torch.long)
        mask[row, : len(item.token_ids)] = 1
    return input_ids, mask


class TransformersCpuBackend(EmbeddingBackend):
    """Runs a Hugging Face encoder on the CPU; batches are sorted by length to cut padding."""

    def __init__(
        self,
        *,
        model_dir: Path,
        pooling: str = "mean",
        max_batch_tokens: int = 2048,
        num_threads: int = 0,
        batch_wait: float | None = None,
        max_queued_tokens: int | None = None,
        label: str = "",
        device: str = "cpu",
        dtype: str = "float32",
    ) -> None:
        self.model_dir = model_dir
        self.label = label or model_dir.name
        self.pooling = pooling
        self.max_batch_tokens = max_batch_tokens
        self.num_threads = num_threads
        # Seconds a pass waits for concurrent requests to join it; None: no dynamic batching.
        self.batch_wait = batch_wait
        # Tokens the batcher may hold queued before it sheds requests; None: the setting
        # EMBEDDINGS_MAX_QUEUED_TOKENS.
        self.max_queued_tokens = max_queued_tokens
        # The gateway runs on the CPU in float32; bench/gpu_backend.py runs the same code on a
        # GPU ("cuda", "float16"). Pooling is always float32.
        self.device = device
        self.dtype = dtype
        self._model: Any = None
        self._pad_id = 0
        self.batcher: DynamicBatcher | None = None
        # One forward pass at a time: torch already spreads a pass over every core, and
        # concurrent passes would only fight over them.
        self._lock = threading.Lock()

    @property
    def runtime(self) -> str:
        """What runs the forward pass."""
        return "torch"

    def load(self) -> None:
        torch = _import_torch()
        from transformers import AutoModel

        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        model = AutoModel.from_pretrained(str(self.model_dir), dtype=getattr(torch, self.dtype))
        model.to(self.device).eval()
        self._pad_id = model.config.pad_token_id or 0
        self._model = model
        if self.batch_wait is not None and self.batcher is None:
            self.batcher = DynamicBatcher(
                self._forward,
                max_batch_tokens=self.max_batch_tokens,
                max_wait=self.batch_wait,
                max_queued_tokens=settings.EMBEDDINGS_MAX_QUEUED_TOKENS
                if self.max_queued_tokens is None
                else self.max_queued_tokens,
                name=f"batcher-{self.label}",
                on_pass=BATCH_ITEMS.labels(self.label).observe,
            )

    def health(self) -> BackendHealth:
        if self._model is None:
            return BackendHealth(ok=False, detail="not loaded")
        if self.batcher is not None and not self.batcher.alive:
            return BackendHealth(
                ok=False, detail="the dynamic batcher's runner thread is dead (restart the process)"
            )
        return BackendHealth(ok=True, detail="loaded on cpu")

    def shed_retry_after(self) -> float | None:
        batcher = self.batcher
        if batcher is None or batcher.max_queued_tokens is None:
            return None
        return batcher.full_retry_after()

    def embed(self, items: Sequence[EmbedItem]) -> np.ndarray:
        if self._model is None:
            raise BackendError("model not loaded")
        if any(item.image is not None for item in items):
            raise BackendError("this backend embeds text only")
        if self.batcher is not None:
            return self.batcher.embed(items)
        deadline = current_deadline()
        per_item: list[np.ndarray | None] = [None] * len(items)
        for batch in token_budget_passes(items, self.max_batch_tokens):
            if deadline is not None and deadline.expired:
                raise BackendTimeout("the deadline passed between forward passes")
            inputs = [items[i] for i in batch]
            rows = checked_rows(inputs, self._forward(inputs))
            for index, vectors in zip(batch, rows, strict=True):
                per_item[index] = vectors
        return np.concatenate([v for v in per_item if v is not None], axis=0)

    def _forward(self, batch: list[EmbedItem]) -> list[np.ndarray]:
        torch = _import_torch()
        input_ids, mask = padded_batch(batch, self._pad_id)
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        with self._lock, torch.inference_mode():
            try:
                hidden = self._hidden(input_ids, mask).float()
            except (RuntimeError, IndexError, ValueError) as exc:
                raise BackendError(f"forward pass failed: {exc}") from exc
            if batch[0].spans is not None:  # a late-chunking item, alone in its batch
                spans = batch[0].spans
                chunks = torch.stack([hidden[0, start:end].mean(dim=0) for start, end in spans])
                return [chunks.cpu().numpy()]
            pooled = self._pool(hidden, mask).cpu().numpy()
            if any(item.per_token for item in batch):
                hidden = hidden.cpu()
            return [
                hidden[row, : len(item.token_ids)].numpy()
                if item.per_token
                else pooled[row : row + 1]
                for row, item in enumerate(batch)
            ]

    def _hidden(self, input_ids: Any, mask: Any) -> Any:
        """The encoder's last hidden state for a padded batch."""
        return self._model(input_ids=input_ids, attention_mask=mask).last_hidden_state

    def _pool(self, hidden: Any, mask: Any) -> Any:
        torch = _import_torch()
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "last":
            return hidden[torch.arange(hidden.shape[0]), mask.sum(dim=1) - 1]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
