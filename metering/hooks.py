"""What other apps ask to hear of metering, without metering importing them.

Payments registers its auto-recharge trigger here (billing.apps); the lifecycle calls every
hook after a debit commits. A failing hook is logged and never fails the request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from billing.models import ApiKey

logger = logging.getLogger(__name__)

AfterDebit = Callable[[ApiKey], None]

_after_debit: list[AfterDebit] = []


def after_debit_register(hook: AfterDebit) -> None:
    """Call `hook(api_key)` after every committed debit (once per hook, however often asked)."""
    if hook not in _after_debit:
        _after_debit.append(hook)


def after_debit_run(api_key: ApiKey) -> None:
    """Run the after-debit hooks for a key."""
    for hook in list(_after_debit):
        try:
            hook(api_key)
        except Exception:
            logger.exception("After-debit hook %s failed", getattr(hook, "__name__", hook))
