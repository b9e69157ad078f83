from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from metering.usage import usage_rollup_day


class Command(BaseCommand):
    help = "Recompute the daily usage rollups (today and yesterday by default)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--day", type=date.fromisoformat, action="append", help="YYYY-MM-DD")

    def handle(self, *args: Any, **options: Any) -> None:
        today = timezone.now().date()
        for day in options["day"] or [today - timedelta(days=1), today]:
            rows = usage_rollup_day(day=day)
            self.stdout.write(f"{day}: {rows} row(s)")
