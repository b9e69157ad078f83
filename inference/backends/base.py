"""The one small interface every inference backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EmbedItem:
    """One model input: token ids as the model will see them (special tokens included), or an
    image (decoded RGB pixels, set just before inference).

    With `spans` (late chunking) the backend pools each span separately and returns one row
    per span instead of one for the whole sequence; with `per_token` (multi-vector output) it
    returns every token's last hidden state, a row per token id, special tokens included.
    """

    token_ids: list[int]
    spans: list[tuple[int, int]] | None = None
    image: Any = None
    text: str | None = None  # the (prefixed) text, for workers that tokenize themselves
    per_token: bool = False

    @property
    def output_rows(self) -> int:
        if self.per_token:
            return len(self.token_ids)
        return len(self.spans) if self.spans is not None else 1


@dataclass(frozen=True)
class BackendHealth:
    ok: bool
    detail: str


class BackendError(Exception):
    """The backend could not produce vectors (crashed, unreachable, no capacity)."""


class BackendTimeout(BackendError):
    """The backend did not answer within its time limit (or the request's deadline)."""


class BackendOverloaded(BackendError):
    """The backend holds more queued work than it may; the request is shed before it waits."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BackendInputError(BackendError):
    """The backend refused this input (a worker's 4xx): the client's error, not the backend's."""


class EmbeddingBackend(ABC):
    """Turns token ids into pooled, unnormalised float32 vectors."""

    # Token-level output (each token's last hidden state), which not every backend can give (a
    # vLLM worker answers pooled vectors only): late chunking and multi-vector output need it.
    supports_late_chunking = True

    @property
    def supports_token_output(self) -> bool:
        """Whether `embed` takes `per_token` and late-chunking items (token-level output)."""
        return self.supports_late_chunking

    @abstractmethod
    def load(self) -> None:
        """Load weights or connect; called once before the first `embed`."""

    @abstractmethod
    def embed(self, items: Sequence[EmbedItem]) -> np.ndarray:
        """Vectors for the items, rows in item order (late-chunking items give a row per span)."""

    @abstractmethod
    def health(self) -> BackendHealth:
        """Whether this backend can serve requests now."""

    def shed_retry_after(self) -> float | None:
        """Seconds to retry after when the work already queued here passes its bound, so that
        a new request is refused before anything is spent on it; None when it can take more."""
        return None
