"""The API key format: a fixed prefix, 256 random bits and a checksum.

`jina_` + 43 base62 characters (32 random bytes) + 6 base62 characters of CRC32 over the
prefix and body. The checksum lets a mistyped or made-up key be refused without a database
lookup (the pattern GitHub uses for its tokens); the database keeps only a SHA-256 digest.
"""

from __future__ import annotations

import hashlib
import secrets
import string
import zlib

from django.conf import settings

ALPHABET = string.digits + string.ascii_letters
RANDOM_BYTES = 32
BODY_LENGTH = 43  # ceil(256 / log2(62))
CHECKSUM_LENGTH = 6  # ceil(32 / log2(62))
DISPLAY_LENGTH = 8  # body characters kept in the clear to tell keys apart (48 of 256 bits)


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, remainder = divmod(number, 62)
        digits.append(ALPHABET[remainder])
    return "".join(reversed(digits))


def _checksum(prefix: str, body: str) -> str:
    return _base62(zlib.crc32(f"{prefix}{body}".encode()), CHECKSUM_LENGTH)


def key_prefix() -> str:
    return settings.API_KEY_PREFIX


def key_generate() -> str:
    """A new random key; shown to its owner once and never stored."""
    prefix = key_prefix()
    body = _base62(int.from_bytes(secrets.token_bytes(RANDOM_BYTES), "big"), BODY_LENGTH)
    return f"{prefix}{body}{_checksum(prefix, body)}"


def key_is_well_formed(key: str) -> bool:
    """Prefix, length, alphabet and checksum: everything that can be checked without the DB."""
    prefix = key_prefix()
    if len(key) != len(prefix) + BODY_LENGTH + CHECKSUM_LENGTH or not key.startswith(prefix):
        return False
    rest = key[len(prefix) :]
    if any(char not in ALPHABET for char in rest):
        return False
    body, checksum = rest[:BODY_LENGTH], rest[BODY_LENGTH:]
    return secrets.compare_digest(checksum, _checksum(prefix, body))


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_display_prefix(key: str) -> str:
    """The first characters of a key, kept to name it in lists (`jina_AbCd1234…`)."""
    return key[: len(key_prefix()) + DISPLAY_LENGTH]
