"""Backends say what they can do, and the services route by it: what one cannot do is a coded
refusal, never an attribute error deep in a request."""

from __future__ import annotations

import json

import pytest

from inference.backends.base import Capability
from inference.models import EmbeddingModel
from inference.registry import backend_for
from tests.factories import EmbeddingModelFactory
from tests.jina_spec import assert_error_envelope

Backend, Kind = EmbeddingModel.Backend, EmbeddingModel.Kind


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"backend": Backend.CPU}, {Capability.EMBED, Capability.HIDDEN_STATES}),
        (
            {"backend": Backend.CLIP, "modalities": ["text", "image"]},
            {Capability.EMBED, Capability.IMAGES},
        ),
        ({"backend": Backend.VLLM}, {Capability.EMBED, Capability.WORKERS}),
        (
            {"backend": Backend.VLLM, "modalities": ["text", "image"]},
            {Capability.EMBED, Capability.IMAGES, Capability.WORKERS},
        ),
        ({"backend": Backend.CPU, "kind": Kind.RERANKER}, {Capability.SCORE_PAIRS}),
        (
            {"backend": Backend.VLLM, "kind": Kind.RERANKER},
            {Capability.SCORE_PAIRS, Capability.WORKERS},
        ),
    ],
)
def test_each_registry_entry_gets_a_backend_with_its_capabilities(db, tmp_path, fields, expected):
    model = EmbeddingModelFactory.build(
        name="m", image_tile_size=224, tokens_per_tile=1000, **fields
    )
    assert backend_for(model, tmp_path).capabilities == expected


def test_a_backend_without_pair_scoring_refuses_pairs_with_a_backend_error(db, tmp_path) -> None:
    from inference.backends.base import BackendError

    backend = backend_for(EmbeddingModelFactory.build(name="m", backend=Backend.VLLM), tmp_path)
    with pytest.raises(BackendError, match="does not score pairs"):
        backend.score([])
    assert backend.workers_status() == []  # no worker registered for it


def test_late_chunking_on_a_backend_without_hidden_states_is_a_coded_400(
    client, api_key, default_model, settings
) -> None:
    # The vLLM backend loads (with no worker) before the refusal; its health thread stays
    # asleep for the run instead of checking a registry row this test's teardown removes.
    settings.WORKER_HEALTH_INTERVAL_SECONDS = 3600
    EmbeddingModelFactory(name="pooled-only", backend=Backend.VLLM)
    response = client.post(
        "/v1/embeddings",
        data=json.dumps({"model": "pooled-only", "input": ["a", "b"], "late_chunking": True}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api_key.plaintext}",
    )
    assert response.status_code == 400
    assert_error_envelope(response.json(), "INPUT_VALIDATION_ERROR")
    assert "late_chunking is not available for pooled-only" in response.json()["detail"]
