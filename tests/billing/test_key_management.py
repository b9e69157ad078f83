"""Key management on the key's page: rename, an expiry the API honours at its time, and allowed
models the API refuses others of (403 AUTH_MODEL_NOT_ALLOWED, before any work, nothing charged)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from billing.models import ApiKey, LedgerEntry, UsageRecord
from embeddings_site import errors
from tests.factories import ApiKeyFactory
from tests.jina_spec import assert_error_envelope

MODEL = "all-MiniLM-L6-v2"
OTHER = "some-other-model"

pytestmark = pytest.mark.django_db


def api(client: Client, key: ApiKey, path: str, body: dict[str, Any]) -> Any:
    return client.post(
        path,
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key.plaintext}",  # type: ignore[attr-defined]
    )


@pytest.fixture
def owner(api_key: ApiKey) -> Client:
    client = Client()
    client.force_login(api_key.user)
    return client


def save_settings(owner: Client, key: ApiKey, **fields: Any) -> Any:
    data = {"name": key.name, **fields}
    return owner.post(f"/dashboard/keys/{key.pk}/settings", data)


def test_the_key_page_renames_the_key_and_shows_its_settings(
    owner: Client, api_key: ApiKey, default_model: Any
) -> None:
    page = owner.get(f"/dashboard/keys/{api_key.pk}/")
    assert b'id="key-settings-form"' in page.content
    assert f'value="{MODEL}"'.encode() in page.content  # the registry's models to choose from

    response = save_settings(
        owner,
        api_key,
        name="search backend",
        expires_at="2031-05-04T03:02",
        allowed_models=[MODEL],
        low_balance_alert_tokens="5000",
    )
    assert response.status_code == 302

    api_key.refresh_from_db()
    assert api_key.name == "search backend"
    assert api_key.expires_at is not None
    assert api_key.expires_at.isoformat() == "2031-05-04T03:02:00+00:00"
    assert api_key.allowed_models == [MODEL]
    assert api_key.low_balance_alert_tokens == 5000
    page = owner.get(f"/dashboard/keys/{api_key.pk}/").content.decode()
    assert "<h1>search backend" in page
    assert "Expires 2031-05-04 03:02 UTC" in page
    assert 'value="5000"' in page
    assert f'value="{MODEL}" id="id_allowed_models_0" checked' in page.replace("\n", " ")

    # Blank fields clear the expiry, the allowed models and the alert.
    save_settings(owner, api_key, name="search backend")
    api_key.refresh_from_db()
    assert (api_key.expires_at, api_key.allowed_models, api_key.low_balance_alert_tokens) == (
        None,
        [],
        None,
    )


def test_bad_settings_are_refused_with_a_message_and_nothing_changes(
    owner: Client, api_key: ApiKey, default_model: Any
) -> None:
    response = save_settings(owner, api_key, allowed_models=["no-such-model"])
    assert response.status_code == 302
    page = owner.get(response["Location"]).content.decode()
    assert "Allowed models: Select a valid choice." in page
    response = save_settings(owner, api_key, low_balance_alert_tokens="-3")
    assert "greater than or equal to 1" in owner.get(response["Location"]).content.decode()
    api_key.refresh_from_db()
    assert api_key.allowed_models == [] and api_key.low_balance_alert_tokens is None


def test_nobody_changes_someone_elses_key(client: Client, api_key: ApiKey) -> None:
    stranger = ApiKeyFactory()
    client.force_login(stranger.user)
    assert save_settings(client, api_key, name="mine now").status_code == 404
    api_key.refresh_from_db()
    assert api_key.name == "test key"


@pytest.mark.slow
def test_an_expiry_refuses_the_key_at_its_time_even_while_the_key_is_cached(
    client: Client,
    owner: Client,
    api_key: ApiKey,
    default_model: Any,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings.KEY_CACHE_SECONDS = 3600  # a cache lifetime far past the expiry
    expiry = timezone.now() + timedelta(hours=1)
    save_settings(owner, api_key, expires_at=expiry.strftime("%Y-%m-%dT%H:%M"))
    api_key.refresh_from_db()
    assert api_key.expires_at is not None

    assert api(client, api_key, "/v1/embeddings", {"input": ["hello"]}).status_code == 200
    before = ApiKey.objects.get(pk=api_key.pk).balance

    later = api_key.expires_at + timedelta(seconds=1)
    monkeypatch.setattr(timezone, "now", lambda: later)
    refused = api(client, api_key, "/v1/embeddings", {"input": ["hello"]})
    assert refused.status_code == 401
    assert_error_envelope(refused.json(), "AUTH_KEY_EXPIRED")
    assert "expired at" in refused.json()["detail"]
    assert refused["WWW-Authenticate"] == 'Bearer realm="api"'
    assert ApiKey.objects.get(pk=api_key.pk).balance == before
    # The key's page says so.
    assert b"expired</span>" in owner.get(f"/dashboard/keys/{api_key.pk}/").content

    # Moving the expiry later lets the key in again at once.
    save_settings(owner, api_key, expires_at="2040-01-01T00:00")
    assert api(client, api_key, "/v1/embeddings", {"input": ["hello"]}).status_code == 200


def test_the_error_table_has_the_new_codes() -> None:
    assert errors.ERROR_TABLE[errors.ErrorCode.AUTH_KEY_EXPIRED][0] == 401
    assert errors.ERROR_TABLE[errors.ErrorCode.AUTH_MODEL_NOT_ALLOWED][0] == 403


REFUSED_REQUESTS = {
    "embeddings": ("/v1/embeddings", {"model": MODEL, "input": ["hello"]}),
    "rerank": ("/v1/rerank", {"model": MODEL, "query": "q", "documents": ["a", "b"]}),
    "classify": (
        "/v1/classify",
        {"model": MODEL, "input": ["bake bread"], "labels": ["food", "sport"]},
    ),
    "tokenize": ("/v1/tokenize", {"model": MODEL, "prompt": "hello"}),
    "train": (
        "/v1/train",
        {
            "model": MODEL,
            "input": [{"text": "Win money", "label": "spam"}, {"text": "Lunch?", "label": "ham"}],
        },
    ),
    "batch": (
        "/v1/batch/embeddings",
        {"model": MODEL, "input": [{"custom_id": "a", "body": {"input": "hello"}}]},
    ),
}


@pytest.mark.parametrize("operation", sorted(REFUSED_REQUESTS))
def test_a_model_the_key_may_not_use_is_refused_with_403_and_nothing_charged(
    client: Client, owner: Client, api_key: ApiKey, default_model: Any, operation: str
) -> None:
    save_settings(owner, api_key, allowed_models=[OTHER_REGISTERED])
    before = ApiKey.objects.get(pk=api_key.pk).balance
    entries = LedgerEntry.objects.filter(api_key=api_key).count()

    path, body = REFUSED_REQUESTS[operation]
    response = api(client, api_key, path, body)

    assert response.status_code == 403, response.content
    assert_error_envelope(response.json(), "AUTH_MODEL_NOT_ALLOWED")
    detail = response.json()["detail"]
    assert MODEL in detail and OTHER_REGISTERED in detail
    assert ApiKey.objects.get(pk=api_key.pk).balance == before
    assert LedgerEntry.objects.filter(api_key=api_key).count() == entries
    if operation != "batch":
        usage = UsageRecord.objects.filter(api_key=api_key).get()
        assert (usage.error_code, usage.http_status, usage.charged_tokens) == (
            "AUTH_MODEL_NOT_ALLOWED",
            403,
            0,
        )
    else:
        assert not api_key.batch_jobs.exists()  # type: ignore[attr-defined]


OTHER_REGISTERED = "second-model"


@pytest.fixture(autouse=True)
def _second_model(db: None) -> None:
    """A second registry model to allow instead (never loaded: the refusal comes first)."""
    from tests.factories import EmbeddingModelFactory

    EmbeddingModelFactory(name=OTHER_REGISTERED, hugging_face_id="example/second-model")


def test_an_allowed_model_is_served_and_the_openai_batch_of_another_is_refused(
    client: Client, owner: Client, api_key: ApiKey, default_model: Any
) -> None:
    save_settings(owner, api_key, allowed_models=[MODEL])
    served = api(client, api_key, "/v1/embeddings", {"model": MODEL, "input": ["hello"]})
    assert served.status_code == 200
    refused = api(client, api_key, "/v1/embeddings", {"model": OTHER_REGISTERED, "input": ["x"]})
    assert refused.status_code == 403
    assert_error_envelope(refused.json(), "AUTH_MODEL_NOT_ALLOWED")

    from django.core.files.uploadedfile import SimpleUploadedFile

    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": OTHER_REGISTERED, "input": "hello"},
    }
    auth = {"HTTP_AUTHORIZATION": f"Bearer {api_key.plaintext}"}  # type: ignore[attr-defined]
    upload = client.post(
        "/v1/files",
        data={
            "purpose": "batch",
            "file": SimpleUploadedFile("b.jsonl", json.dumps(line).encode() + b"\n"),
        },
        **auth,
    )
    assert upload.status_code == 200, upload.content
    batch = client.post(
        "/v1/batches",
        data=json.dumps(
            {
                "input_file_id": upload.json()["id"],
                "endpoint": "/v1/embeddings",
                "completion_window": "24h",
            }
        ),
        content_type="application/json",
        **auth,
    )
    assert batch.status_code == 403, batch.content
    assert_error_envelope(batch.json(), "AUTH_MODEL_NOT_ALLOWED")
    assert not api_key.batch_jobs.exists()  # type: ignore[attr-defined]


def test_a_batch_job_whose_model_the_key_may_no_longer_use_fails_uncharged(
    client: Client, owner: Client, api_key: ApiKey, default_model: Any
) -> None:
    from batch.processing import batch_job_process

    path, body = REFUSED_REQUESTS["batch"]
    created = api(client, api_key, path, body)
    assert created.status_code == 200, created.content
    before = ApiKey.objects.get(pk=api_key.pk).balance
    save_settings(owner, api_key, allowed_models=[OTHER_REGISTERED])  # narrowed before it ran

    job_id = created.json()["batch_id"]
    batch_job_process(job_id=job_id)
    status = client.get(
        f"/v1/batch/{job_id}",
        HTTP_AUTHORIZATION=f"Bearer {api_key.plaintext}",  # type: ignore[attr-defined]
    ).json()
    assert status["status"] == "failed", status
    assert "AUTH_MODEL_NOT_ALLOWED" in json.dumps(status)
    assert ApiKey.objects.get(pk=api_key.pk).balance == before
