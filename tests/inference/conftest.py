"""Shared fixtures for the inference tests: a tiny CLIP checkpoint registered twice, with
Jina's two tile prices."""

from __future__ import annotations

import pytest

from inference.models import EmbeddingModel
from tests.inference.images import make_tiny_clip

# Jina's published prices: jina-clip-v1 224 px tiles at 1,000 tokens, jina-clip-v2 512 px at 4,000.
CLIP_V1 = {"image_tile_size": 224, "tokens_per_tile": 1000}
CLIP_V2 = {"image_tile_size": 512, "tokens_per_tile": 4000}


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> str:
    return str(make_tiny_clip(tmp_path_factory.mktemp("tiny-clip")))


@pytest.fixture
def clip_models(db, clip_dir, default_model) -> dict[str, EmbeddingModel]:
    common = {
        "backend": "clip",
        "source": clip_dir,
        "dimensions": 16,
        "max_tokens": 77,
        "modalities": ["text", "image"],
        "tasks": {"retrieval.query": "", "retrieval.passage": ""},
    }
    return {
        "v1": EmbeddingModel.objects.create(name="tiny-clip-v1", **common, **CLIP_V1),
        "v2": EmbeddingModel.objects.create(name="tiny-clip-v2", **common, **CLIP_V2),
    }
