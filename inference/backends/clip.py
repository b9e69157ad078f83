"""In-process CPU backend for CLIP-style models: text and images land in one space."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inference.backends.base import (
    BackendError,
    BackendHealth,
    Capability,
    EmbeddingBackend,
    EmbedItem,
)
from inference.backends.cpu import _import_torch, padded_batch


class ClipCpuBackend(EmbeddingBackend):
    """A transformers CLIPModel from a local directory (config, weights, preprocessor_config)."""

    capabilities = frozenset({Capability.EMBED, Capability.IMAGES})

    def __init__(self, *, model_dir: Path, num_threads: int = 0, max_batch: int = 32) -> None:
        self.model_dir = model_dir
        self.num_threads = num_threads
        self.max_batch = max_batch
        self._model: Any = None
        self._processor: Any = None
        self._pad_id = 0
        self._lock = threading.Lock()

    def load(self) -> None:
        torch = _import_torch()
        from transformers import CLIPImageProcessorPil, CLIPModel

        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        model = CLIPModel.from_pretrained(str(self.model_dir), dtype=torch.float32)
        model.eval()
        # The Pillow image processor: same transforms as CLIP's, without torchvision.
        self._processor = CLIPImageProcessorPil.from_pretrained(str(self.model_dir))
        self._pad_id = getattr(model.config.text_config, "pad_token_id", None) or 0
        self._model = model

    def health(self) -> BackendHealth:
        if self._model is None:
            return BackendHealth(ok=False, detail="not loaded")
        return BackendHealth(ok=True, detail="loaded on cpu (clip)")

    def embed(self, items: Sequence[EmbedItem]) -> np.ndarray:
        if self._model is None:
            raise BackendError("model not loaded")
        if any(item.spans is not None for item in items):
            raise BackendError("late chunking is for text encoders")
        rows: list[np.ndarray | None] = [None] * len(items)
        texts = [i for i, item in enumerate(items) if item.image is None]
        images = [i for i, item in enumerate(items) if item.image is not None]
        for start in range(0, len(texts), self.max_batch):
            batch = texts[start : start + self.max_batch]
            for index, vector in zip(batch, self._text([items[i] for i in batch]), strict=True):
                rows[index] = vector
        for start in range(0, len(images), self.max_batch):
            batch = images[start : start + self.max_batch]
            for index, vector in zip(
                batch, self._images([items[i].image for i in batch]), strict=True
            ):
                rows[index] = vector
        return np.stack([row for row in rows if row is not None]).astype(np.float32)

    def _text(self, batch: list[EmbedItem]) -> np.ndarray:
        torch = _import_torch()
        input_ids, mask = padded_batch(batch, self._pad_id)
        with self._lock, torch.inference_mode():
            try:
                output = self._model.get_text_features(input_ids=input_ids, attention_mask=mask)
            except (RuntimeError, IndexError, ValueError) as exc:
                raise BackendError(f"text forward pass failed: {exc}") from exc
            return _features(output).numpy()

    def _images(self, images: list[Any]) -> np.ndarray:
        torch = _import_torch()
        pixels = self._processor(images=images, return_tensors="pt")["pixel_values"]
        with self._lock, torch.inference_mode():
            try:
                output = self._model.get_image_features(pixel_values=pixels)
            except (RuntimeError, IndexError, ValueError) as exc:
                raise BackendError(f"image forward pass failed: {exc}") from exc
            return _features(output).numpy()


def _features(output: Any) -> Any:
    """The projected embedding, whether transformers returns a tensor or a model output."""
    return getattr(output, "pooler_output", output)
