"""Services for vLLM workers: registration by the launcher (heartbeat) or by an operator."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from inference.models import EmbeddingModel, Worker


class UnknownModel(Exception):
    """The worker names a model that is not in the registry."""


@transaction.atomic
def worker_heartbeat(
    *, model_name: str, url: str, served_model_name: str = "", accepts_token_ids: bool = True
) -> Worker:
    """A launcher worker says it is up: register it, or refresh its heartbeat."""
    model = EmbeddingModel.objects.filter(name=model_name).first()
    if model is None:
        raise UnknownModel(model_name)
    worker, _ = Worker.objects.update_or_create(
        model=model,
        url=url.rstrip("/"),
        defaults={
            "served_model_name": served_model_name,
            "accepts_token_ids": accepts_token_ids,
            "source": Worker.Source.LAUNCHER,
            "enabled": True,
            "last_heartbeat_at": timezone.now(),
        },
    )
    return worker


def worker_deregister(*, model_name: str, url: str) -> int:
    """A launcher worker is stopping: take it out now (rather than when its heartbeat expires)."""
    deleted, _ = Worker.objects.filter(
        model__name=model_name, url=url.rstrip("/"), source=Worker.Source.LAUNCHER
    ).delete()
    return deleted


@transaction.atomic
def worker_register(
    *, model: EmbeddingModel, url: str, served_model_name: str = "", accepts_token_ids: bool = True
) -> tuple[Worker, bool]:
    """An operator adds an existing OpenAI-compatible embedding server (vLLM, TEI) to a model."""
    worker, created = Worker.objects.update_or_create(
        model=model,
        url=url.rstrip("/"),
        defaults={
            "served_model_name": served_model_name,
            "accepts_token_ids": accepts_token_ids,
            "source": Worker.Source.OPERATOR,
            "enabled": True,
        },
    )
    return worker, created
