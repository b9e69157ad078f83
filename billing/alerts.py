"""The low-balance e-mail: sent once when a debit takes a key's balance below its owner's
threshold, and re-armed when the balance is back at or above it.

The after-debit hook (registered in billing.apps) runs in the request: it only flips the key's
`low_balance_alerted_at` with one conditional update, so however many debits cross the line at
once, one wins and one mail is queued; the mail itself goes out on a background task.
"""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.db.models import F
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from billing.models import ApiKey
from embeddings_site.background import task_enqueue


def low_balance_after_debit(api_key: ApiKey) -> None:
    """The after-debit hook: claim the alert when the balance fell below the threshold."""
    if api_key.low_balance_alert_tokens is None:
        # The (possibly cached) key has no alert: no query on the hot path.
        return
    claimed = ApiKey.objects.filter(
        pk=api_key.pk,
        low_balance_alert_tokens__isnull=False,
        low_balance_alerted_at__isnull=True,
        balance__lt=F("low_balance_alert_tokens"),
    ).update(low_balance_alerted_at=timezone.now())
    if claimed:
        task_enqueue(low_balance_email, api_key.pk)
    else:
        low_balance_alert_rearm(api_key_id=api_key.pk)


def low_balance_alert_rearm(*, api_key_id: int) -> bool:
    """Re-arm a sent alert once the balance is at or above the threshold again (a top-up)."""
    return bool(
        ApiKey.objects.filter(
            pk=api_key_id,
            low_balance_alerted_at__isnull=False,
            balance__gte=F("low_balance_alert_tokens"),
        ).update(low_balance_alerted_at=None)
    )


@shared_task(ignore_result=True)
def low_balance_email(api_key_id: int) -> None:
    """Tell a key's owner that its balance fell below their threshold."""
    api_key = ApiKey.objects.select_related("user").filter(pk=api_key_id).first()
    if api_key is None or api_key.low_balance_alert_tokens is None:
        return
    send_mail(
        subject=f"Low balance on API key {api_key.prefix}…",
        message=render_to_string(
            "billing/low_balance_email.txt",
            {
                "key": api_key,
                "threshold": api_key.low_balance_alert_tokens,
                "topup_url": settings.SITE_URL + reverse("billing") + f"?key={api_key.pk}",
                "key_url": settings.SITE_URL + reverse("key-detail", args=[api_key.pk]),
            },
        ),
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=[api_key.user.email],
        fail_silently=True,
    )
