"""The data directory (the SQLite file, the embedded default's secret key, collected static
files): made when the site starts, never when the settings are imported."""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
from pathlib import Path

from django.utils.functional import lazy


def data_dirs_create(*directories: Path) -> None:
    """Make the directories the site writes to (SiteConfig.ready, before any connection)."""
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True)


@functools.cache
def _secret_key_in(directory: Path) -> str:
    key_file = directory / "secret_key"
    if not key_file.exists():
        directory.mkdir(parents=True, exist_ok=True)
        # Written aside, then linked into place: two processes starting at once agree on the
        # first key, and neither ever reads a half-written file.
        staged = directory / f".secret_key.{os.getpid()}.{secrets.token_hex(4)}"
        staged.write_text(secrets.token_urlsafe(50))
        staged.chmod(0o600)
        try:
            with contextlib.suppress(FileExistsError):
                os.link(staged, key_file)
        finally:
            staged.unlink()
    return key_file.read_text().strip()


def embedded_secret_key(directory: Path) -> str:
    """The embedded default's SECRET_KEY: one random key per data directory, kept in it so
    that sessions survive restarts. Lazy: read (or made) where Django first signs something."""
    return lazy(_secret_key_in, str)(directory)
