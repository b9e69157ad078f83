from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from inference.services import embedding_model_register_defaults


class Command(BaseCommand):
    help = "Register the default models (all-MiniLM-L6-v2) if they are missing."

    def handle(self, *args: Any, **options: Any) -> None:
        created = embedding_model_register_defaults()
        for model in created:
            self.stdout.write(f"Registered {model.name}")
        if not created:
            self.stdout.write("Default models already registered")
