"""The receipt e-mailed when a payment is paid (a top-up or an auto-recharge).

`payment_apply_intent` queues it in the same locked transaction that credits the payment's
tokens, after commit, and only on the transition to credited: a webhook delivered twice, the
return page racing the webhook or a re-run event cannot send a second receipt.
"""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse

from billing.models import Payment
from embeddings_site.background import task_enqueue


def receipt_email_queue(*, payment: Payment) -> None:
    """Send the payment's receipt once the current transaction commits."""
    payment_id = payment.pk
    transaction.on_commit(lambda: task_enqueue(receipt_email, payment_id))


@shared_task(ignore_result=True)
def receipt_email(payment_id: int) -> None:
    """E-mail the buyer the receipt of a paid payment."""
    payment = Payment.objects.select_related("user", "api_key").filter(pk=payment_id).first()
    if payment is None or payment.credited_tokens == 0:
        return
    pack_name = next(
        (str(pack["name"]) for pack in settings.TOKEN_PACKS if pack["id"] == payment.pack_id),
        payment.pack_id,
    )
    send_mail(
        subject=f"Receipt: {payment.tokens:,} tokens for API key {payment.api_key.prefix}…",
        message=render_to_string(
            "billing/receipt_email.txt",
            {
                "payment": payment,
                "pack_name": pack_name,
                "receipt_page": settings.SITE_URL + reverse("payment-detail", args=[payment.pk]),
            },
        ),
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=[payment.user.email],
        fail_silently=True,
    )
