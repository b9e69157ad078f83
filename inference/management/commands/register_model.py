from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.models import EmbeddingModel
from inference.registry import checkpoint_check, checkpoint_needs_check
from inference.services import embedding_model_register


class Command(BaseCommand):
    help = "Add a model to the registry, or update the one with this name."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True, help="What clients send as `model`")
        parser.add_argument("--backend", choices=EmbeddingModel.Backend.values, default="cpu")
        parser.add_argument(
            "--kind",
            choices=EmbeddingModel.Kind.values,
            default="embedding",
            help="reranker: a cross-encoder (sequence classification, one label; dimensions 1)",
        )
        parser.add_argument(
            "--source", required=True, help="Model directory or package:<pkg>/<dir>"
        )
        parser.add_argument("--dimensions", type=int, required=True)
        parser.add_argument("--max-tokens", type=int, required=True)
        parser.add_argument("--hugging-face-id", default="")
        parser.add_argument("--description", default="")
        parser.add_argument("--pooling", choices=EmbeddingModel.Pooling.values, default="mean")
        parser.add_argument("--matryoshka", action="store_true")
        parser.add_argument(
            "--task",
            action="append",
            default=[],
            metavar="NAME=PREFIX",
            help='A task and its prefix, e.g. "retrieval.query=query: " (repeatable)',
        )
        parser.add_argument("--default-task", default="")
        parser.add_argument("--modalities", default="text", help="text, or text,image")
        parser.add_argument("--tile-size", type=int, help="Image models: tile edge in pixels")
        parser.add_argument("--tokens-per-tile", type=int, help="Image models: tokens per tile")
        parser.add_argument("--price", type=Decimal, help="USD per million tokens")
        parser.add_argument("--disabled", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        tasks = {}
        for entry in options["task"]:
            name, separator, prefix = entry.partition("=")
            if not separator or not name:
                raise CommandError(f"--task must be NAME=PREFIX, not {entry!r}")
            tasks[name] = prefix
        fields: dict[str, Any] = {
            "kind": options["kind"],
            "backend": options["backend"],
            "source": options["source"],
            "dimensions": options["dimensions"],
            "max_tokens": options["max_tokens"],
            "hugging_face_id": options["hugging_face_id"],
            "description": options["description"],
            "pooling": options["pooling"],
            "matryoshka": options["matryoshka"],
            "tasks": tasks,
            "default_task": options["default_task"],
            "modalities": [m.strip() for m in options["modalities"].split(",") if m.strip()],
            "image_tile_size": options["tile_size"],
            "tokens_per_tile": options["tokens_per_tile"],
            "enabled": not options["disabled"],
        }
        if options["price"] is not None:
            fields["price_per_million_tokens"] = options["price"]
        self._check_checkpoint(name=options["name"], fields=fields)
        try:
            model, created = embedding_model_register(name=options["name"], fields=fields)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(
            f"{'Registered' if created else 'Updated'} {model.name} ({model.backend})"
        )

    def _check_checkpoint(self, *, name: str, fields: dict[str, Any]) -> None:
        """Refuse an entry its checkpoint cannot serve (it would only fail once loaded)."""
        entry = EmbeddingModel(name=name, **fields)
        if not checkpoint_needs_check(entry, EmbeddingModel.objects.filter(name=name).first()):
            return
        check = checkpoint_check(entry)
        for note in check.skipped:
            self.stdout.write(f"Not checked: {note}")
        if not check.ok:
            problems = [
                f"--{f.replace('_', '-')}: {m}" for f, ms in check.errors.items() for m in ms
            ]
            raise CommandError("The checkpoint does not fit this entry. " + " ".join(problems))
