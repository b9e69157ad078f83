"""Payments' background work: the off-session auto-recharge charge."""

from __future__ import annotations

from celery import shared_task

from billing.models import ApiKey
from billing.payments import auto_recharge_run, auto_recharge_wanted
from embeddings_site.background import task_enqueue


@shared_task(ignore_result=True)
def auto_recharge(api_key_id: int) -> None:
    """Top a key up off-session if it is still under its auto-recharge threshold."""
    auto_recharge_run(api_key_id=api_key_id)


def auto_recharge_after_debit(api_key: ApiKey) -> None:
    """The after-debit hook payments registers with metering: charge when under threshold."""
    if auto_recharge_wanted(api_key=api_key):
        task_enqueue(auto_recharge, api_key.pk)
