"""Reads for the model registry."""

from __future__ import annotations

from django.conf import settings
from django.db.models import Q, QuerySet
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from embeddings_site.ttl_cache import TtlCache
from inference.models import EmbeddingModel


def embedding_model_list(*, enabled_only: bool = True) -> QuerySet[EmbeddingModel]:
    """Registry entries, by name."""
    models = EmbeddingModel.objects.all()
    return models.filter(enabled=True) if enabled_only else models


# Registry rows by requested name: the registry changes rarely and is read on every request.
_models: TtlCache[EmbeddingModel] = TtlCache(max_entries=1000)


@receiver([post_save, post_delete], sender=EmbeddingModel)
def embedding_model_cache_clear(**kwargs: object) -> None:
    """Forget cached registry rows (any registry edit in this process; other processes follow
    within MODEL_CACHE_SECONDS)."""
    _models.clear()


def embedding_model_get(*, name: str) -> EmbeddingModel | None:
    """An enabled model by its name or its Hugging Face id (`org/name`)."""
    cached = _models.get(name)
    if cached is not None:
        return cached
    model = (
        EmbeddingModel.objects.filter(enabled=True)
        .filter(Q(name=name) | Q(hugging_face_id=name))
        .order_by("name")
        .first()
    )
    if model is not None and settings.MODEL_CACHE_SECONDS > 0:
        _models.put(name, model, seconds=settings.MODEL_CACHE_SECONDS)
    return model
