from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.models import EmbeddingModel, Worker
from inference.workers import worker_register


class Command(BaseCommand):
    help = "Add an existing OpenAI-compatible embedding server (vLLM, TEI) as a worker of a model."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", required=True, help="Registry model name (backend vllm)")
        parser.add_argument("--url", required=True, help="Base URL, e.g. http://gpu-1:8001")
        parser.add_argument("--served-model-name", default="", help="`model` the server expects")
        parser.add_argument(
            "--text-input", action="store_true", help="The server takes text, not token ids"
        )
        parser.add_argument("--remove", action="store_true", help="Remove the worker instead")

    def handle(self, *args: Any, **options: Any) -> None:
        model = EmbeddingModel.objects.filter(name=options["model"]).first()
        if model is None:
            raise CommandError(f"No model named {options['model']!r}")
        if options["remove"]:
            deleted, _ = Worker.objects.filter(model=model, url=options["url"].rstrip("/")).delete()
            self.stdout.write(f"removed {deleted} worker(s)")
            return
        if model.backend != EmbeddingModel.Backend.VLLM:
            raise CommandError(
                f"{model.name} is served by the {model.backend} backend, not vllm workers"
            )
        worker, created = worker_register(
            model=model,
            url=options["url"],
            served_model_name=options["served_model_name"],
            accepts_token_ids=not options["text_input"],
        )
        self.stdout.write(
            f"{'Added' if created else 'Updated'} worker {worker.url} for {model.name}"
        )
