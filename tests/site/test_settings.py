"""The settings at start-up: a value that does not parse stops manage.py, gunicorn and Celery
with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from embeddings_site.env import READ

ROOT = Path(__file__).resolve().parents[2]


def environment(data_dir: Path, **values: str) -> dict[str, str]:
    """This process's environment without any variable the settings read, plus `values`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in READ and not name.startswith(("DJANGO_", "PYTEST", "HF_", "TRANSFORMERS_"))
    }
    return {
        **env,
        "DJANGO_SETTINGS_MODULE": "embeddings_site.settings",
        "DATA_DIR": str(data_dir),
        **values,
    }


def run(data_dir: Path, *args: str, **values: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=environment(data_dir, **values),
        capture_output=True,
        text=True,
        timeout=120,
    )


PACK = '{"id": "p", "name": "P", "tokens": 1000, "amount": 500, "currency": "dollars"}'


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("EMBEDDINGS_MAX_INPUTS", "abc", "EMBEDDINGS_MAX_INPUTS: 'abc' is not an integer"),
        ("REQUEST_TIMEOUT_SECONDS", "-1", "REQUEST_TIMEOUT_SECONDS: -1 must be more than 0"),
        ("LEDGER_GROUP_LANES", "0", "LEDGER_GROUP_LANES: 0 is below the minimum, 1"),
        (
            "RATE_LIMIT_ON_REDIS_ERROR",
            "sometimes",
            "RATE_LIMIT_ON_REDIS_ERROR: 'sometimes' is not one of closed, local, open",
        ),
        ("DJANGO_ENV", "prod", "DJANGO_ENV: 'prod' is not one of development, production"),
        (
            "EMAIL_USE_TLS",
            "sometimes",
            "EMAIL_USE_TLS: 'sometimes' is not a boolean (true or false)",
        ),
        (
            "IP_RATE_LIMIT_SIGNUP",
            "20/x",
            "IP_RATE_LIMIT_SIGNUP: '20/x' is not a rate like 20/m (a count per s, m, h or d, e.g. 5/10m)",
        ),
        (
            "REDIS_URL",
            "http://:secret@cache:6379/0",
            "REDIS_URL: the URL has scheme 'http'; expected redis:// or rediss:// or unix://",
        ),
        (
            "RATE_LIMIT_TIERS",
            '{"free": {"rpm": 60}}',
            "RATE_LIMIT_TIERS: tier 'free' lacks tpm, concurrency",
        ),
        (
            "TOKEN_PACKS",
            f"[{PACK}]",
            "TOKEN_PACKS: pack 'p': currency must be a three-letter code such as usd, not 'dollars'",
        ),
        (
            "CONCURRENCY_LEASE_SECONDS",
            "30",
            "CONCURRENCY_LEASE_SECONDS (30) must be more than REQUEST_TIMEOUT_SECONDS (60)",
        ),
        (
            "USAGE_ABANDONED_AFTER_SECONDS",
            "60",
            "USAGE_ABANDONED_AFTER_SECONDS (60) must be more than REQUEST_TIMEOUT_SECONDS (60)",
        ),
    ],
)
def test_a_value_that_does_not_parse_stops_manage_py_with_one_line_naming_it(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    result = run(tmp_path / "data", "manage.py", "check", **{variable: value})
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"Configuration error: {message}"]


def test_an_unknown_database_url_scheme_names_it_and_never_the_password(tmp_path: Path) -> None:
    result = run(
        tmp_path / "data",
        "manage.py",
        "migrate",
        DATABASE_URL="postgress://embeddings:hunter2@db:5432/embeddings",
    )
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("Configuration error: DATABASE_URL: Scheme 'postgress://' is unknown")
    assert "hunter2" not in result.stderr


def test_gunicorn_and_celery_refuse_to_start_on_a_bad_value(tmp_path: Path) -> None:
    gunicorn = run(
        tmp_path / "data",
        "-m",
        "gunicorn",
        "embeddings_site.wsgi",
        "--bind",
        "127.0.0.1:0",
        "--no-control-socket",
        LEDGER_GROUP_LANES="0",
    )
    assert gunicorn.returncode == 3  # gunicorn's "worker failed to boot": it stops, no respawn
    assert "LEDGER_GROUP_LANES: 0 is below the minimum, 1" in gunicorn.stderr
    celery = run(
        tmp_path / "data",
        "-m",
        "celery",
        "-A",
        "embeddings_site",
        "worker",
        "--pool",
        "solo",
        LEDGER_GROUP_LANES="0",
    )
    assert celery.returncode != 0
    assert "LEDGER_GROUP_LANES: 0 is below the minimum, 1" in celery.stderr


def test_production_refuses_to_start_without_a_secret_key(tmp_path: Path) -> None:
    result = run(tmp_path / "data", "manage.py", "check", DJANGO_ENV="production")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "Configuration error: DJANGO_SECRET_KEY must be set when DJANGO_ENV=production"
    ]
