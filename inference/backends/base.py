"""The one small interface every inference backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from inference.backends.scoring import PairItem


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


class Capability(StrEnum):
    """What a backend can do; the services route by it (and refuse what it cannot)."""

    EMBED = "embed"  # pooled vectors for token ids or texts
    HIDDEN_STATES = "hidden_states"  # every token's last hidden state: late chunking, multi-vector
    IMAGES = "images"  # vectors for decoded images
    SCORE_PAIRS = "score_pairs"  # a cross-encoder's (query, document) scores: rerank
    WORKERS = "workers"  # serves through remote workers, whose states it reports


class EmbeddingBackend(ABC):
    """Turns token ids into pooled, unnormalised float32 vectors (or, for a cross-encoder,
    (query, document) pairs into scores): what it can do is in `capabilities`."""

    capabilities: frozenset[Capability] = frozenset({Capability.EMBED, Capability.HIDDEN_STATES})

    def can(self, capability: Capability) -> bool:
        """Whether this backend does `capability`."""
        return capability in self.capabilities

    @abstractmethod
    def load(self) -> None:
        """Load weights or connect; called once before the first `embed`."""

    @abstractmethod
    def embed(self, items: Sequence[EmbedItem]) -> np.ndarray:
        """Vectors for the items, rows in item order (late-chunking items give a row per span)."""

    @abstractmethod
    def health(self) -> BackendHealth:
        """Whether this backend can serve requests now."""

    def score(self, pairs: Sequence[PairItem]) -> np.ndarray:
        """One relevance score per pair, in order (backends with SCORE_PAIRS): the sigmoid of
        the cross-encoder's single logit."""
        raise BackendError(f"{type(self).__name__} does not score pairs")

    def workers_status(self) -> list[dict[str, Any]]:
        """Each remote worker's URL, state and load (backends with WORKERS), for operators."""
        return []

    def shed_retry_after(self) -> float | None:
        """Seconds to retry after when the work already queued here passes its bound, so that
        a new request is refused before anything is spent on it; None when it can take more."""
        return None
