"""GET /v1/models, /v1/models/{id}, and the health probes."""

from __future__ import annotations

import contextlib
from decimal import Decimal

import pytest
from django.test import Client

from inference.models import EmbeddingModel
from inference.registry import runtimes
from tests.factories import EmbeddingModelFactory
from tests.jina_spec import assert_error_envelope, assert_valid

pytestmark = pytest.mark.django_db


def test_models_list_is_jina_model_info_and_openai_model(client: Client, default_model) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert_valid(body, "ModelListResponse")
    assert body["object"] == "list"
    (model,) = body["data"]
    assert model["id"] == "all-MiniLM-L6-v2"
    assert model["object"] == "model"
    assert model["hugging_face_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert model["dimensions"] == 384 and model["max_output_length"] == 384
    assert model["max_tokens"] == 256 and model["context_length"] == 256
    assert model["input_modalities"] == ["text"]
    assert model["matryoshka"] is False
    assert "retrieval.query" in model["tasks"]
    assert Decimal(model["pricing"]["prompt"]) * 1_000_000 == default_model.price_per_million_tokens


def test_disabled_models_are_not_listed(client: Client, default_model) -> None:
    EmbeddingModelFactory(name="off-model", hugging_face_id="", enabled=False)
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["all-MiniLM-L6-v2"]


@pytest.mark.parametrize("model_id", ["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"])
def test_model_detail_by_name_or_hugging_face_id(client: Client, default_model, model_id) -> None:
    response = client.get(f"/v1/models/{model_id}")
    assert response.status_code == 200
    assert_valid(response.json(), "ModelInfo")
    assert response.json()["id"] == "all-MiniLM-L6-v2"


def test_unknown_model_detail_is_404(client: Client, default_model) -> None:
    response = client.get("/v1/models/jina-embeddings-v3")
    assert response.status_code == 404
    assert_error_envelope(response.json(), "RESOURCE_NOT_FOUND")


def test_health_and_live(client: Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/live").json() == {"status": "alive"}


def loaded(*models: EmbeddingModel) -> None:
    """Load models here and now, as /ready would start doing in the background."""
    for model in models:
        with contextlib.suppress(Exception):  # a failure is what runtimes.status then reports
            runtimes.get(model)


def test_a_broken_optional_model_shows_failed_and_the_gateway_stays_ready(
    client: Client, default_model, settings
) -> None:
    broken = EmbeddingModelFactory(name="broken", hugging_face_id="", source="/nonexistent/model")
    loaded(default_model, broken)
    settings.METRICS_TOKEN = "t"  # why a model failed is shown to the operator only
    response = client.get("/ready", HTTP_AUTHORIZATION="Bearer t")
    assert response.status_code == 200  # still in the load balancer's rotation
    body = response.json()
    assert body["status"] == "degraded"
    states = body["checks"]["models"]
    assert states["all-MiniLM-L6-v2"]["state"] == "loaded"
    assert states["broken"]["state"] == "failed"
    assert "nonexistent" in states["broken"]["detail"]
    broken.enabled = False
    broken.save()
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_a_broken_default_model_takes_the_gateway_out_of_rotation(client: Client, db) -> None:
    default = EmbeddingModelFactory(source="/nonexistent/default")
    other = EmbeddingModelFactory(name="other-minilm", hugging_face_id="")
    loaded(default, other)
    response = client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready"
    assert body["checks"]["models"]["all-MiniLM-L6-v2"]["state"] == "failed"
    assert body["checks"]["models"]["other-minilm"]["state"] == "loaded"


def test_without_the_default_model_any_loaded_model_makes_it_ready(
    client: Client, db, settings
) -> None:
    settings.EMBEDDINGS_DEFAULT_MODEL = "not-registered"
    working = EmbeddingModelFactory(name="other-minilm", hugging_face_id="")
    broken = EmbeddingModelFactory(name="broken", hugging_face_id="", source="/nonexistent/model")
    loaded(working, broken)
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    working.enabled = False
    working.save()
    assert client.get("/ready").status_code == 503  # only a broken model is left


def test_ready_without_models_is_not_ready(client: Client) -> None:
    response = client.get("/ready")
    assert response.status_code == 503


def test_a_model_whose_weights_are_missing_answers_503(post_embeddings, db) -> None:
    EmbeddingModelFactory(name="ghost", hugging_face_id="", source="/nonexistent/ghost")
    response = post_embeddings({"model": "ghost", "input": "hi"})
    assert response.status_code == 503
    assert_error_envelope(response.json(), "SERVICE_UNAVAILABLE")
    assert runtimes.status(EmbeddingModelFactory(name="ghost")).state == "failed"
