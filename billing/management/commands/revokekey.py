from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.selectors import api_key_find
from billing.services import api_key_revoke


class Command(BaseCommand):
    help = "Revoke an API key by its id or display prefix (e.g. jina_AbCd1234)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key", help="Key id or display prefix")

    def handle(self, *args: Any, **options: Any) -> None:
        api_key = api_key_find(reference=options["key"])
        if api_key is None:
            raise CommandError(f"No single key matches {options['key']!r}")
        api_key_revoke(api_key=api_key)
        self.stdout.write(f"Revoked {api_key.prefix}… (id {api_key.pk})")
