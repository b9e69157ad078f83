from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.selectors import api_key_find
from billing.services import api_key_grant


class Command(BaseCommand):
    help = "Grant tokens to a key, by its id or display prefix (an admin_grant ledger entry)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key", help="Key id or display prefix, e.g. jina_AbCd1234")
        parser.add_argument("tokens", type=int, help="Tokens to add (positive)")
        parser.add_argument("--note", default="manage.py grant", help="Reason, kept on the ledger")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["tokens"] <= 0:
            raise CommandError("tokens must be positive")
        api_key = api_key_find(reference=options["key"])
        if api_key is None:
            raise CommandError(f"No single key matches {options['key']!r}")
        api_key_grant(api_key=api_key, tokens=options["tokens"], note=options["note"])
        api_key.refresh_from_db(fields=["balance"])
        self.stdout.write(
            f"Granted {options['tokens']:,} tokens to {api_key.prefix}…; balance {api_key.balance:,}"
        )
