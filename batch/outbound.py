"""HTTP calls to the clients' own servers: fetching a job's `input_url` and posting its webhook.

Both go through the outbound guard, embeddings_site.public_http (public addresses only, a
bounded DNS lookup, the checked address pinned for the connection, redirects re-checked, time
and size limits); BATCH_URL_ALLOWED_HOSTS lists host:port pairs exempt from the public-address
rule (tests only).

Webhook signature: `X-Webhook-Signature: v1=<hex>` is HMAC-SHA256 with the job's
`webhook_secret` over `"<X-Webhook-Timestamp>." + raw body`, as Stripe signs its webhooks.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from django.conf import settings

from embeddings_site.public_http import FetchLimits, PublicUrlError, fetch_public_bytes, post_public


class OutboundError(Exception):
    """The URL was refused or did not answer as it should; the message says why."""


def input_url_fetch(url: str) -> bytes:
    """The JSONL file at a job's input_url (at most BATCH_MAX_FILE_BYTES)."""
    limits = FetchLimits(
        max_bytes=settings.BATCH_MAX_FILE_BYTES,
        connect_timeout=settings.IMAGE_FETCH_CONNECT_TIMEOUT,
        read_timeout=settings.IMAGE_FETCH_READ_TIMEOUT,
        deadline=settings.BATCH_INPUT_FETCH_DEADLINE,
    )
    try:
        return fetch_public_bytes(
            url,
            limits=limits,
            allowed_hosts=settings.BATCH_URL_ALLOWED_HOSTS,
            label="input",
            accept="application/jsonl, application/x-ndjson, text/plain, */*",
        )
    except PublicUrlError as exc:
        raise OutboundError(str(exc)) from exc


def webhook_signature(*, secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value for a webhook body sent at `timestamp` (Unix seconds)."""
    signed = f"{timestamp}.".encode() + body
    return "v1=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def webhook_post(*, url: str, secret: str, job_id: str, body: bytes) -> None:
    """POST a signed webhook; OutboundError unless the receiver answers 2xx."""
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "X-Webhook-Id": job_id,
        "X-Webhook-Timestamp": str(timestamp),
        "X-Webhook-Signature": webhook_signature(secret=secret, timestamp=timestamp, body=body),
    }
    try:
        status = post_public(
            url,
            body=body,
            headers=headers,
            timeout=settings.BATCH_WEBHOOK_TIMEOUT_SECONDS,
            allowed_hosts=settings.BATCH_URL_ALLOWED_HOSTS,
            label="webhook",
        )
    except PublicUrlError as exc:
        raise OutboundError(str(exc)) from exc
    if not 200 <= status < 300:
        raise OutboundError(f"webhook URL answered HTTP {status}")
