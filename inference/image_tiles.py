"""Images: from a request's URL / base64 / data URI to bytes, size from the header, tiles, pixels.

Billing follows Jina's rule: tiles = ceil(width / tile) × ceil(height / tile), tokens = tiles ×
tokens per tile, per model. The size comes from the image's own header before any pixel is
decoded, so an image that claims 20000×20000 is refused without the memory it would take.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from PIL import Image, UnidentifiedImageError

from inference.image_fetch import ImageFetchError, fetch_image_bytes

# Pillow decoders that may run on untrusted input; everything else is refused unopened.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
_DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I
)
_SCHEME = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*):")


class ImageInputError(Exception):
    """The image cannot be used; the message is for the client."""


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
    if is_data_uri(source):
        match = _DATA_URI.match(source)
        if not match or not match.group("b64"):
            raise ImageInputError("image data URIs must be base64 (data:image/png;base64,…)")
        return _b64decode(source[match.end() :])
    scheme = _SCHEME.match(source)
    if scheme and source[scheme.end() : scheme.end() + 2] == "//":
        try:
            return fetch_image_bytes(source)
        except ImageFetchError as exc:
            raise ImageInputError(str(exc)) from exc
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
