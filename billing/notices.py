"""Template context: the banner shown on every page while a key's auto-recharge is paused."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from billing.models import User
from billing.payments import auto_recharge_notices


def payment_notices(request: HttpRequest) -> dict[str, Any]:
    """Paused auto-recharges of the signed-in user."""
    user = getattr(request, "user", None)
    if not isinstance(user, User) or not user.is_authenticated:
        return {}
    return {"payment_notices": auto_recharge_notices(user=user)}
