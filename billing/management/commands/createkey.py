from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.validators import validate_email

from billing.models import Tier
from billing.services import api_key_create, user_get_or_create


class Command(BaseCommand):
    help = "Issue an API key for a user (created if needed). The key is the last line of stdout."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--email", required=True, help="Owner's e-mail address")
        parser.add_argument("--name", default="default", help="A name to tell the key apart")
        parser.add_argument(
            "--tokens", type=int, help="Start with exactly this many tokens (no trial grant)"
        )
        parser.add_argument("--tier", choices=Tier.values, default=Tier.STANDARD)
        parser.add_argument("--rpm", type=int, help="Requests per minute (overrides the tier)")
        parser.add_argument("--tpm", type=int, help="Tokens per minute (overrides the tier)")
        parser.add_argument(
            "--concurrency", type=int, help="Requests in flight (overrides the tier)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        email = options["email"]
        try:
            validate_email(email)
        except ValidationError as exc:
            raise CommandError(f"Not a valid e-mail address: {email!r}") from exc
        for name in ("tokens", "rpm", "tpm", "concurrency"):
            value = options[name]
            if value is not None and value < (0 if name == "tokens" else 1):
                raise CommandError(f"--{name} must be {'>= 0' if name == 'tokens' else 'positive'}")
        user, created = user_get_or_create(email=email)
        api_key, plaintext = api_key_create(
            user=user,
            name=options["name"],
            tokens=options["tokens"],
            tier=options["tier"],
            rpm=options["rpm"],
            tpm=options["tpm"],
            concurrency=options["concurrency"],
        )
        self.stderr.write(
            f"{'Created user' if created else 'User'} {user.email}; key {api_key.prefix}… "
            f"(id {api_key.pk}, {api_key.balance:,} tokens, tier {api_key.tier}). "
            "Store it now: it is not shown again."
        )
        self.stdout.write(plaintext)
