"""/ready is the load balancer's anonymous probe: it says whether to send traffic and each
model's state; why a model failed and which workers serve it (URLs, errors) are for the
operator only — staff signed in, or METRICS_TOKEN as a bearer, as /metrics accepts."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from django.test import Client

from billing.models import User
from inference.models import Worker
from inference.registry import runtimes
from tests.factories import EmbeddingModelFactory, UserFactory

pytestmark = pytest.mark.django_db

WORKER_URL = "http://127.0.0.1:9"  # nothing listens: the worker shows as unhealthy, with its error


@pytest.fixture
def deployment(default_model: Any, settings: Any) -> None:
    """A loaded default model, a model that failed to load, and a vLLM model with a worker."""
    settings.METRICS_TOKEN = "s3cret-metrics-token"
    # The vLLM backend's health checker then sleeps past the test session instead of polling.
    settings.WORKER_HEALTH_INTERVAL_SECONDS = 3600
    broken: Any = EmbeddingModelFactory(
        name="broken", hugging_face_id="", source="/nonexistent/model"
    )
    remote: Any = EmbeddingModelFactory(
        name="minilm-vllm", hugging_face_id="", backend="vllm", source=default_model.source
    )
    Worker.objects.create(model=remote, url=WORKER_URL)
    for model in (default_model, broken, remote):
        with contextlib.suppress(Exception):  # a failure is what /ready then reports
            runtimes.get(model)
    # The runtime is process-wide: an earlier test's model of this name may have left it with
    # another set of workers, re-read only every few seconds. Read this test's worker now.
    backend: Any = runtimes.get(remote).backend
    backend.pool.refresh(force=True)
    backend.check_health()


def staff_client() -> Client:
    client = Client()
    client.force_login(
        User.objects.create_user(email="ops@example.com", password="x", is_staff=True)
    )
    return client


def signed_in_client() -> Client:
    client = Client()
    user: Any = UserFactory()
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    "caller",
    [
        lambda: Client().get("/ready"),
        lambda: Client().get("/ready", HTTP_AUTHORIZATION="Bearer wrong-token"),
        lambda: Client().get("/ready", HTTP_AUTHORIZATION="Bearer jéton"),
        lambda: signed_in_client().get("/ready"),
    ],
    ids=["anonymous", "wrong-token", "non-ascii-token", "customer"],
)
def test_others_see_the_status_and_each_models_state_only(deployment: None, caller: Any) -> None:
    response = caller()
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["models"] == {
        "all-MiniLM-L6-v2": {"state": "loaded"},
        "broken": {"state": "failed"},
        "minilm-vllm": {"state": body["checks"]["models"]["minilm-vllm"]["state"]},
    }
    assert "nonexistent" not in response.content.decode()
    assert WORKER_URL not in response.content.decode()


@pytest.mark.parametrize(
    "caller",
    [
        lambda: Client().get("/ready", HTTP_AUTHORIZATION="Bearer s3cret-metrics-token"),
        lambda: staff_client().get("/ready"),
    ],
    ids=["metrics-token", "staff"],
)
def test_the_operator_sees_load_errors_and_workers(deployment: None, caller: Any) -> None:
    response = caller()
    assert response.status_code == 200
    models = response.json()["checks"]["models"]
    assert models["broken"]["state"] == "failed"
    assert "nonexistent" in models["broken"]["detail"]
    (worker,) = models["minilm-vllm"]["workers"]
    assert worker["url"] == WORKER_URL
    assert worker["state"] != "healthy" and worker["detail"]
