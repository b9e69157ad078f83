"""Admission before work (ADVERSARIAL 24): a request the key cannot afford is refused before
its texts are tokenized or its images fetched, whatever its size."""

from __future__ import annotations

import json

import pytest

from billing.models import UsageRecord
from billing.services import api_key_create
from inference.tokens import TextTokenizer
from tests.factories import UserFactory
from tests.inference.images import ImageServer
from tests.jina_spec import assert_error_envelope

BIG_TEXT = "Retrieval needs long passages. " * 310  # about 9.5 KB


@pytest.fixture
def tokenize_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many texts the real tokenizer was asked to read (a counting wrapper around it)."""
    calls: list[int] = []
    real = TextTokenizer.encode

    def counting(self, texts, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(texts))
        return real(self, texts, **kwargs)

    monkeypatch.setattr(TextTokenizer, "encode", counting)
    return calls


def make_key(tokens: int, **limits: int):  # type: ignore[no-untyped-def]
    api_key, plaintext = api_key_create(user=UserFactory(), tokens=tokens, **limits)
    api_key.plaintext = plaintext
    return api_key


def post(client, key, body):  # type: ignore[no-untyped-def]
    return client.post(
        "/v1/embeddings",
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key.plaintext}",
    )


@pytest.mark.django_db
def test_a_ten_token_key_is_refused_before_2048_big_texts_are_tokenized(
    client, default_model, tokenize_calls
) -> None:
    key = make_key(tokens=10)
    response = post(client, key, {"input": [BIG_TEXT] * 2048, "truncate": True})
    assert response.status_code == 403
    assert_error_envelope(response.json(), "AUTHZ_INSUFFICIENT_BALANCE")
    assert "at least 2,048 tokens" in response.json()["detail"]
    assert tokenize_calls == []
    key.refresh_from_db()
    assert key.balance == 10


@pytest.mark.django_db
def test_a_request_larger_than_the_whole_tpm_is_refused_before_tokenizing(
    client, default_model, tokenize_calls
) -> None:
    key = make_key(tokens=1_000_000, tpm=1000)
    response = post(client, key, {"input": ["word"] * 2000})
    assert response.status_code == 400
    assert_error_envelope(response.json(), "INPUT_TOKEN_LIMIT_EXCEEDED")
    assert tokenize_calls == []


@pytest.mark.slow
@pytest.mark.django_db
def test_a_refusal_for_balance_takes_none_of_the_keys_tpm(client, default_model) -> None:
    key = make_key(tokens=10, tpm=500)
    for _ in range(12):
        assert post(client, key, {"input": ["one two"] * 20}).status_code == 403
    # The same key, now funded, can still use its whole minute of tokens.
    from metering.ledger import balance_credit

    balance_credit(api_key=key, tokens=10_000, kind="admin_grant")
    served = post(client, key, {"input": ["one two three four five"] * 60})
    assert served.status_code == 200, served.json()
    assert served.json()["usage"]["total_tokens"] > 400


@pytest.mark.django_db
def test_an_affordable_request_is_counted_exactly_after_pre_admission(
    client, default_model, tokenize_calls
) -> None:
    key = make_key(tokens=100_000, tpm=10_000)
    response = post(client, key, {"input": ["one text", "and another one"]})
    assert response.status_code == 200
    usage = response.json()["usage"]["total_tokens"]
    assert tokenize_calls == [2]
    key.refresh_from_db()
    assert key.balance == 100_000 - usage
    # Pre-admission took a bound of 2 tokens; the exact count replaced it in the window.
    assert int(response["X-RateLimit-Remaining-Tokens"]) == 10_000 - usage


@pytest.mark.django_db
def test_a_ten_token_key_never_makes_the_server_fetch_its_100_image_urls(
    client, clip_models, settings
) -> None:
    server = ImageServer().start()
    try:
        settings.IMAGE_FETCH_ALLOWED_HOSTS = [server.host]
        key = make_key(tokens=10)
        body = {
            "model": clip_models["v2"].name,
            "input": [{"image": server.url(f"/img?w=64&h=64&n={i}")} for i in range(100)],
        }
        response = post(client, key, body)
        assert response.status_code == 403
        assert_error_envelope(response.json(), "AUTHZ_INSUFFICIENT_BALANCE")
        assert server.connections == 0
        assert UsageRecord.objects.filter(api_key=key, status="succeeded").count() == 0
    finally:
        server.stop()


@pytest.mark.django_db
def test_a_full_model_queue_sheds_new_requests_before_they_are_counted_or_charged(
    client, default_model, tokenize_calls
) -> None:
    import threading

    from inference.backends.base import EmbedItem
    from inference.registry import runtimes

    backend = runtimes.get(default_model).backend
    batcher = backend.batcher  # type: ignore[attr-defined]
    assert batcher is not None, "the default CPU model runs the dynamic batcher"
    running, release = threading.Event(), threading.Event()
    real_forward, real_bound = batcher._forward, batcher.max_queued_tokens

    def held_forward(items):  # type: ignore[no-untyped-def]
        running.set()
        release.wait(60)
        return real_forward(items)

    batcher._forward, batcher.max_queued_tokens = held_forward, 8
    fillers = [
        threading.Thread(
            target=backend.embed, args=([EmbedItem(token_ids=[101] + [2000] * 10 + [102])],)
        )
        for _ in range(2)
    ]
    try:
        fillers[0].start()
        assert running.wait(60)  # the first filler's pass is running, held
        fillers[1].start()  # queued behind it: 12 tokens, over the bound of 8
        for _ in range(6000):  # until the second filler is queued (at most a minute)
            if batcher.queued_tokens:
                break
            threading.Event().wait(0.01)
        assert batcher.queued_tokens
        key = make_key(tokens=1000)
        response = post(client, key, {"input": ["a short text"]})
        assert response.status_code == 503
        assert_error_envelope(response.json(), "SERVICE_OVERLOADED")
        assert int(response["Retry-After"]) >= 1
        assert tokenize_calls == []
        key.refresh_from_db()
        assert key.balance == 1000
    finally:
        release.set()
        for filler in fillers:
            filler.join(60)
        batcher._forward, batcher.max_queued_tokens = real_forward, real_bound
    assert post(client, make_key(tokens=1000), {"input": ["a short text"]}).status_code == 200


@pytest.mark.django_db
def test_more_image_urls_than_a_request_may_name_are_refused_before_any_fetch(
    client, clip_models, settings
) -> None:
    server = ImageServer().start()
    try:
        settings.IMAGE_FETCH_ALLOWED_HOSTS = [server.host]
        settings.IMAGE_MAX_URLS_PER_REQUEST = 4
        key = make_key(tokens=1_000_000)
        urls = [{"image": server.url(f"/img?w=32&h=32&n={i}")} for i in range(5)]
        response = post(client, key, {"model": clip_models["v2"].name, "input": urls})
        assert response.status_code == 400
        assert_error_envelope(response.json(), "INPUT_INVALID_IMAGE")
        assert "input[4]" in response.json()["detail"]
        assert server.connections == 0
        served = post(client, key, {"model": clip_models["v2"].name, "input": urls[:4]})
        assert served.status_code == 200
        assert server.connections == 4
        key.refresh_from_db()
        assert key.balance == 1_000_000 - served.json()["usage"]["total_tokens"]
    finally:
        server.stop()
