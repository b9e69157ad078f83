"""The settings at start-up: a value that does not parse stops manage.py, gunicorn and Celery
with a message naming the variable; importing the settings writes nothing and leaves the
environment alone; `.env.example` lists exactly what they read, with their defaults."""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from embeddings_site.env import READ, RETIRED

# Each test but the last starts manage.py, gunicorn, Celery or a fresh interpreter with its own
# environment.
e2e = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ROOT / "embeddings_site" / "settings.py"
ENV_EXAMPLE = ROOT / ".env.example"
# Lines of .env.example for variables something other than the settings reads, and where.
READ_ELSEWHERE = {
    "HOST": "Makefile",
    "PORT": "Makefile",
    "WORKERS": "Makefile",
    "THREADS": "Makefile",
    "PROMETHEUS_MULTIPROC_DIR": "embeddings_site/metrics.py",
}


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


@e2e
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
    assert not (tmp_path / "data").exists()


@e2e
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


@e2e
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


@e2e
def test_production_refuses_to_start_without_a_secret_key(tmp_path: Path) -> None:
    result = run(tmp_path / "data", "manage.py", "check", DJANGO_ENV="production")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "Configuration error: DJANGO_SECRET_KEY must be set when DJANGO_ENV=production"
    ]


IMPORT_SETTINGS = """
import json, os
before = dict(os.environ)
import embeddings_site.settings
print(json.dumps(sorted(k for k in {*before, *os.environ} if before.get(k) != os.environ.get(k))))
"""


@e2e
def test_importing_the_settings_writes_nothing_and_leaves_the_environment_alone(
    tmp_path: Path,
) -> None:
    result = run(tmp_path / "missing" / "data", "-c", IMPORT_SETTINGS)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    assert list(tmp_path.iterdir()) == []


SIGN = "from django.core import signing; print(signing.dumps('session'))"


@e2e
def test_the_site_makes_its_data_directory_at_start_up_and_keeps_one_secret_key(
    tmp_path: Path,
) -> None:
    data = tmp_path / "missing" / "data"
    check = run(data, "manage.py", "check")
    assert check.returncode == 0, check.stderr
    assert sorted(path.name for path in data.iterdir()) == ["static"]

    signed = run(data, "manage.py", "shell", "-c", SIGN)
    assert signed.returncode == 0, signed.stderr
    value = signed.stdout.splitlines()[-1]
    # A restart keeps the key: what the first process signed (a session) still verifies.
    verify = f"from django.core import signing; print(signing.loads({value!r}))"
    verified = run(data, "manage.py", "shell", "-c", verify)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.splitlines()[-1] == "session"
    key_file = data / "secret_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert sorted(path.name for path in data.iterdir()) == ["secret_key", "static"]


@e2e
def test_models_load_with_the_hub_offline(tmp_path: Path) -> None:
    script = (
        "import django; django.setup(); import huggingface_hub.constants as hub; "
        "print(hub.HF_HUB_OFFLINE)"
    )
    result = run(tmp_path / "data", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True"]


def example_values() -> dict[str, str]:
    names = re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.MULTILINE)
    values = dict(names)
    assert len(values) == len(names), "a variable appears twice in .env.example"
    return values


def test_env_example_lists_exactly_what_the_settings_read_with_their_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in list(READ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    runpy.run_path(str(SETTINGS))
    # Production reads its HTTPS settings too.
    monkeypatch.setenv("DJANGO_ENV", "production")
    monkeypatch.setenv("DJANGO_SECRET_KEY", "x" * 50)
    runpy.run_path(str(SETTINGS))
    monkeypatch.delenv("DJANGO_ENV")
    monkeypatch.delenv("DJANGO_SECRET_KEY")
    runpy.run_path(str(SETTINGS))  # the defaults that follow other variables, as they are

    example = example_values()
    assert sorted(set(READ) - set(example)) == [], "read by the settings, missing in .env.example"
    assert sorted(set(example) - set(READ) - set(READ_ELSEWHERE)) == [], (
        "in .env.example, read by nothing"
    )
    assert sorted(set(example) & RETIRED) == []
    for name, where in READ_ELSEWHERE.items():
        assert name in (ROOT / where).read_text(), f"{name} is no longer read by {where}"

    for name, value in example.items():
        variable = READ.get(name)
        if variable is None or variable.kind in ("str", "list", "url", "json"):
            continue  # an example value may be more telling than an empty default
        if variable.kind in ("int", "float"):
            assert float(value) == float(variable.default), name
        else:  # bool, choice, rate
            assert value == variable.default, name
