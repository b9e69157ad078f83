from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from metering.ledger import ledger_mismatches


class Command(BaseCommand):
    help = "Check that every key's balance equals the sum of its ledger entries; exit 1 if not."

    def handle(self, *args: Any, **options: Any) -> None:
        mismatches = ledger_mismatches()
        for key_id, balance, total in mismatches:
            self.stderr.write(f"key {key_id}: balance {balance:,} but ledger sums to {total:,}")
        if mismatches:
            raise SystemExit(1)
        self.stdout.write("ledger ok: every balance equals the sum of its entries")
