"""Template filters for token counts and payment amounts."""

from __future__ import annotations

from django import template

from billing.models import Payment
from billing.payments import money

register = template.Library()


@register.filter
def tokens(value: int | None) -> str:
    """12345678 -> "12,345,678"."""
    return f"{int(value or 0):,}"


@register.filter
def payment_amount(payment: Payment) -> str:
    """A payment's amount for people: "$50.00" or "50.00 CHF"."""
    return money(amount=payment.amount, currency=payment.currency)
