from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.worker_launcher import WorkerConfig, WorkerConfigError, WorkerLauncher


class Command(BaseCommand):
    help = (
        "Start a vLLM embedding worker from a TOML config and keep it registered with the gateway."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--config", required=True, type=Path, help="worker.toml")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            config = WorkerConfig.from_toml(options["config"])
        except WorkerConfigError as exc:
            raise CommandError(str(exc)) from exc
        code = WorkerLauncher(config, log=lambda message: self.stdout.write(message)).run()
        if code:
            raise SystemExit(code)
