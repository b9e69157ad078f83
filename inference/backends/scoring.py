"""What a backend that scores (query, document) pairs implements: rerankers' one capability."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class PairItem:
    """One (query, document) pair as the model reads it (special tokens and segment ids
    included), and its texts for workers that tokenize themselves (`document` is what is left
    of the document after truncation)."""

    token_ids: list[int]
    type_ids: list[int]
    query: str
    document: str


@runtime_checkable
class PairScorer(Protocol):
    """A backend that scores pairs with a cross-encoder (the registry routes rerankers to it)."""

    def score(self, pairs: Sequence[PairItem]) -> np.ndarray:
        """One relevance score per pair, in order: the sigmoid of the model's single logit."""
        ...
