"""factory_boy factories for users, keys and registry models."""

from __future__ import annotations

from typing import Any

import factory
from django.utils import timezone

from billing.models import ApiKey, User
from billing.services import api_key_create
from inference.catalog import DEFAULT_MODELS
from inference.models import EmbeddingModel


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("email",)

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    # An established account: its address is verified, so its first key gets the trial.
    email_verified_at = factory.LazyFunction(timezone.now)


class ApiKeyFactory(factory.django.DjangoModelFactory):
    """Issues keys through the service; the plaintext is on `.plaintext` for the test to use."""

    class Meta:
        model = ApiKey

    user = factory.SubFactory(UserFactory)
    name = "test key"

    @classmethod
    def _create(cls, model_class: type[ApiKey], *args: Any, **kwargs: Any) -> ApiKey:
        api_key, plaintext = api_key_create(user=kwargs["user"], name=kwargs["name"])
        api_key.plaintext = plaintext  # type: ignore[attr-defined]
        return api_key


class EmbeddingModelFactory(factory.django.DjangoModelFactory):
    """The default catalog entry (all-MiniLM-L6-v2) unless fields are overridden."""

    class Meta:
        model = EmbeddingModel
        django_get_or_create = ("name",)

    name = DEFAULT_MODELS[0]["name"]
    hugging_face_id = DEFAULT_MODELS[0]["hugging_face_id"]
    description = DEFAULT_MODELS[0]["description"]
    backend = DEFAULT_MODELS[0]["backend"]
    source = DEFAULT_MODELS[0]["source"]
    dimensions = DEFAULT_MODELS[0]["dimensions"]
    max_tokens = DEFAULT_MODELS[0]["max_tokens"]
    matryoshka = DEFAULT_MODELS[0]["matryoshka"]
    pooling = DEFAULT_MODELS[0]["pooling"]
    tasks = factory.LazyFunction(lambda: dict(DEFAULT_MODELS[0]["tasks"]))
    modalities = factory.LazyFunction(lambda: ["text"])
    price_per_million_tokens = DEFAULT_MODELS[0]["price_per_million_tokens"]
