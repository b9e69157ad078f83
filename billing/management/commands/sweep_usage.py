from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from metering.ledger import usage_sweep_abandoned


class Command(BaseCommand):
    help = "Refund requests debited by a gateway process that died before finishing them."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=float,
            default=settings.USAGE_ABANDONED_AFTER_SECONDS,
            help="Seconds a request may stay in flight before it counts as abandoned",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        refunded = usage_sweep_abandoned(older_than_seconds=options["older_than"])
        self.stdout.write(f"refunded {refunded} abandoned request(s)")
