"""Reads for the model registry."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from inference.models import EmbeddingModel


def embedding_model_list(*, enabled_only: bool = True) -> QuerySet[EmbeddingModel]:
    """Registry entries, by name."""
    models = EmbeddingModel.objects.all()
    return models.filter(enabled=True) if enabled_only else models


def embedding_model_get(*, name: str) -> EmbeddingModel | None:
    """An enabled model by its name or its Hugging Face id (`org/name`)."""
    return (
        EmbeddingModel.objects.filter(enabled=True)
        .filter(Q(name=name) | Q(hugging_face_id=name))
        .order_by("name")
        .first()
    )
