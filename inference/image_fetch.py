"""Image URLs, fetched through the outbound guard (embeddings_site.public_http) with the images'
own limits and allow-list."""

from __future__ import annotations

from django.conf import settings

from embeddings_site.public_http import FetchBudget, FetchLimits, fetch_public_bytes


def default_limits() -> FetchLimits:
    """One image's size cap and time limits, from the IMAGE_* settings."""
    return FetchLimits(
        max_bytes=settings.IMAGE_MAX_BYTES,
        connect_timeout=settings.IMAGE_FETCH_CONNECT_TIMEOUT,
        read_timeout=settings.IMAGE_FETCH_READ_TIMEOUT,
        deadline=settings.IMAGE_FETCH_DEADLINE,
    )


def fetch_image_bytes(
    url: str, limits: FetchLimits | None = None, *, budget: FetchBudget | None = None
) -> bytes:
    """The body at `url`, or PublicUrlError; never more than max_bytes, never past the deadline."""
    return fetch_public_bytes(
        url,
        limits=limits or default_limits(),
        allowed_hosts=settings.IMAGE_FETCH_ALLOWED_HOSTS,
        label="image",
        accept="image/*",
        budget=budget,
    )
