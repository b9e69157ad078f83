"""Posting to the classification API as one user, and the keys of a second user."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from billing.models import ApiKey
from inference.models import EmbeddingModel
from tests.factories import ApiKeyFactory

Call = Callable[..., Any]


@pytest.fixture
def call(client: Client, api_key: ApiKey, default_model: EmbeddingModel) -> Call:
    """`call("post", "/v1/classify", body, key=...)`: the Django test response."""

    def send(method: str, path: str, body: Any = None, *, key: ApiKey | None = None) -> Any:
        extra: dict[str, Any] = {}
        if body is not None:
            extra = {"data": json.dumps(body), "content_type": "application/json"}
        return getattr(client, method)(
            path,
            HTTP_AUTHORIZATION=f"Bearer {(key or api_key).plaintext}",  # type: ignore[attr-defined]
            **extra,
        )

    return send


@pytest.fixture
def other_key(db: None) -> ApiKey:
    """A key of another user."""
    return ApiKeyFactory()
