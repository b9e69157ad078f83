"""Images: from a request's URL / base64 / data URI to bytes, size from the header, tiles, pixels.

A request's images load together (`images_load`): inline ones are decoded, URLs fetched a few
at a time under one budget for the request, so many or slow URLs cost no more than it allows.

Billing follows Jina's rule: tiles = ceil(width / tile) × ceil(height / tile), tokens = tiles ×
tokens per tile, per model. The size comes from the image's own header before any pixel is
decoded, so an image that claims 20000×20000 is refused without the memory it would take.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import io
import math
import re
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from PIL import Image, UnidentifiedImageError

from embeddings_site.deadlines import current_deadline
from embeddings_site.public_http import FetchBudget, FetchCalledOff, PublicUrlError
from inference.image_fetch import fetch_image_bytes

# Pillow decoders that may run on untrusted input; everything else is refused unopened.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
_DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I
)
_SCHEME = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*):")


# A fetch enforces the budget's time itself; the waiting side allows it this much longer to
# say so (its error names the URL that was slow) before giving up on it.
_FETCH_GRACE_SECONDS = 0.5


class ImageInputError(Exception):
    """The image cannot be used; the message is for the client.

    `index` is the image's position in the sources given to `images_load` (None elsewhere).
    """

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class ImageHeader:
    data: bytes
    format: str
    width: int
    height: int


def is_data_uri(text: str) -> bool:
    return text[:5].lower() == "data:"


def image_bytes(source: str) -> bytes:
    """The bytes an ImageDoc / url / bytes value names: http(s) URL, data URI or base64."""
    if _is_url(source):
        try:
            return fetch_image_bytes(source)
        except PublicUrlError as exc:
            raise ImageInputError(str(exc)) from exc
    return _inline_bytes(source)


def images_load(sources: Sequence[str]) -> list[bytes]:
    """The bytes of each source, in order: data URIs and base64 decoded, URLs fetched together.

    At most IMAGE_MAX_URLS_PER_REQUEST URLs, fetched IMAGE_FETCH_CONCURRENCY at a time, all of
    them within IMAGE_FETCH_MAX_TOTAL_BYTES (each within IMAGE_MAX_BYTES) and within
    IMAGE_FETCH_DEADLINE or the request's remaining time, whichever is shorter. The first
    source that cannot be used raises ImageInputError with its `index`; fetches still running
    are then called off.
    """
    urls = {index: source for index, source in enumerate(sources) if _is_url(source)}
    limit = settings.IMAGE_MAX_URLS_PER_REQUEST
    if len(urls) > limit:
        raise ImageInputError(
            f"a request may name at most {limit} image URLs", index=list(urls)[limit]
        )
    loaded: dict[int, bytes] = {}
    for index, source in enumerate(sources):  # cheap, and may refuse before anything is fetched
        if index not in urls:
            try:
                loaded[index] = _inline_bytes(source)
            except ImageInputError as exc:
                raise ImageInputError(str(exc), index=index) from exc
    if urls:
        loaded.update(_fetch_together(urls))
    return [loaded[index] for index in range(len(sources))]


def _fetch_together(urls: dict[int, str]) -> dict[int, bytes]:
    seconds = settings.IMAGE_FETCH_DEADLINE
    deadline = current_deadline()
    if deadline is not None:
        seconds = min(seconds, deadline.remaining())
    budget = FetchBudget(max_bytes=settings.IMAGE_FETCH_MAX_TOTAL_BYTES, seconds=seconds)
    workers = min(settings.IMAGE_FETCH_CONCURRENCY, len(urls))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-fetch")
    # Each fetch runs in a copy of the request's context: its records carry the request's id.
    futures: dict[Future[bytes], int] = {
        pool.submit(contextvars.copy_context().run, fetch_image_bytes, url, budget=budget): index
        for index, url in urls.items()
    }
    try:
        done, pending = wait(
            futures, timeout=budget.remaining() + _FETCH_GRACE_SECONDS, return_when=FIRST_EXCEPTION
        )
        failed = sorted(
            (futures[future], exc)
            for future in done
            if (exc := future.exception()) is not None and not isinstance(exc, FetchCalledOff)
        )
        if failed:
            index, exc = failed[0]
            raise ImageInputError(str(exc), index=index) from exc
        if pending:  # past the budget's time without noticing (resolving a name, say)
            raise ImageInputError(
                budget.time_out_message(), index=min(futures[future] for future in pending)
            )
        return {index: future.result() for future, index in futures.items()}
    finally:
        budget.call_off()  # a no-op when all have finished
        pool.shutdown(wait=False, cancel_futures=True)


def _is_url(source: str) -> bool:
    if is_data_uri(source):
        return False
    scheme = _SCHEME.match(source)
    return scheme is not None and source[scheme.end() : scheme.end() + 2] == "//"


def _inline_bytes(source: str) -> bytes:
    """A data URI's or a bare base64 string's bytes."""
    if is_data_uri(source):
        match = _DATA_URI.match(source)
        if not match or not match.group("b64"):
            raise ImageInputError("image data URIs must be base64 (data:image/png;base64,…)")
        return _b64decode(source[match.end() :])
    return _b64decode(source)


def _b64decode(text: str) -> bytes:
    cleaned = "".join(text.split())
    if len(cleaned) > settings.IMAGE_MAX_BYTES * 4 // 3 + 4:
        raise ImageInputError(
            f"image is larger than {settings.IMAGE_MAX_BYTES // (1024 * 1024)} MB"
        )
    try:
        data = base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageInputError("image is neither an http(s) URL nor valid base64") from exc
    if not data:
        raise ImageInputError("image is empty")
    return data


def read_header(data: bytes) -> ImageHeader:
    """Format and size from the header only; refuses other formats and oversized images."""
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            width, height = image.size
            image_format = image.format or ""
    except UnidentifiedImageError as exc:
        raise ImageInputError(
            f"not an image in an accepted format ({', '.join(ALLOWED_FORMATS)})"
        ) from exc
    except Image.DecompressionBombError as exc:  # Pillow's own check, on the header's size
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"of {int(claimed.group(1)):,} pixels " if claimed else ""
        raise ImageInputError(
            f"image {size}is over the limit of {settings.IMAGE_MAX_PIXELS:,} pixels"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ImageInputError(f"unreadable image header: {exc}") from exc
    if width <= 0 or height <= 0:
        raise ImageInputError("image has no pixels")
    if width * height > settings.IMAGE_MAX_PIXELS:
        raise ImageInputError(
            f"image of {width}×{height} pixels is over the limit of {settings.IMAGE_MAX_PIXELS:,} pixels"
        )
    return ImageHeader(data=data, format=image_format, width=width, height=height)


def tile_tokens(*, width: int, height: int, tile_size: int, tokens_per_tile: int) -> int:
    """Jina's image price: whole tiles covering the image (partial tiles count), times their price."""
    return math.ceil(width / tile_size) * math.ceil(height / tile_size) * tokens_per_tile


def decode_rgb(header: ImageHeader) -> Any:
    """The pixels, as an RGB PIL image (first frame of an animation)."""
    try:
        with Image.open(io.BytesIO(header.data), formats=ALLOWED_FORMATS) as image:
            image.seek(0)
            return image.convert("RGB")
    except (OSError, ValueError, EOFError) as exc:
        raise ImageInputError(f"image data is corrupt: {exc}") from exc
