"""Template filters for token counts and payment amounts."""

from __future__ import annotations

from django import template

from billing.models import Payment
from billing.payments import money, token_pack_get

register = template.Library()


@register.filter
def tokens(value: int | None) -> str:
    """12345678 -> "12,345,678"."""
    return f"{int(value or 0):,}"


@register.filter
def payment_amount(payment: Payment) -> str:
    """A payment's amount for people: "$50.00" or "50.00 CHF"."""
    return money(amount=payment.amount, currency=payment.currency)


@register.filter
def pack_name(payment: Payment) -> str:
    """The name of a payment's pack ("1B tokens"), or its id once the pack is off sale."""
    pack = token_pack_get(pack_id=payment.pack_id)
    return pack.name if pack is not None else payment.pack_id
