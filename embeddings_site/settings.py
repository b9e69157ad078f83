"""Settings for the embeddings platform, read from the environment in this one place.

Every variable has an embedded default (SQLite, in-process cache, the CPU model) so that
`make run` works on a laptop; production secrets have none. See `.env.example`. Each is read
with a typed reader of embeddings_site.env: a value that does not parse stops start-up with an
error naming it. Importing this module writes nothing (embeddings_site.apps makes DATA_DIR).
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from kombu.transport import TRANSPORT_ALIASES

from embeddings_site import setting_shapes
from embeddings_site.data_dir import embedded_secret_key
from embeddings_site.env import (
    SettingError,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_json,
    env_list,
    env_networks,
    env_rate,
    env_retired,
    env_str,
    env_url,
    require,
)

BASE_DIR = Path(__file__).resolve().parent.parent

# `production` refuses to start without real secrets; `development` is the embedded default.
ENVIRONMENT = env_choice("DJANGO_ENV", "development", ("development", "production"))
PRODUCTION = ENVIRONMENT == "production"

# Made at start-up (embeddings_site.apps), not here: importing the settings writes nothing.
DATA_DIR = Path(env_str("DATA_DIR", str(BASE_DIR / "var")))

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if PRODUCTION:
        raise SettingError("DJANGO_SECRET_KEY must be set when DJANGO_ENV=production")
    SECRET_KEY = embedded_secret_key(DATA_DIR)
DEBUG = env_bool("DJANGO_DEBUG", default=False)
# Not "testserver": Django's test runner (and pytest-django) adds it for the tests alone.
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    # First: its ready() makes DATA_DIR before any other app may touch the database.
    "embeddings_site",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "billing",
    "metering",
    "inference",
    "web",
    "batch",
    "classifiers",
]

MIDDLEWARE = [
    "embeddings_site.middleware.RequestIdMiddleware",
    "embeddings_site.csp.ContentSecurityPolicyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "embeddings_site.middleware.RequestBodyLimitMiddleware",
    "embeddings_site.middleware.DatabaseFaultMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# Bearer-key API routes skip the browser's middleware (embeddings_site.handlers): no sessions,
# CSRF, signed-in user, messages, frame options, CSP or static files for /v1.
API_PATH_PREFIXES = ["/v1/", "/v2/", "/internal/"]
API_MIDDLEWARE = [
    "embeddings_site.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "embeddings_site.middleware.RequestBodyLimitMiddleware",
    "embeddings_site.middleware.DatabaseFaultMiddleware",
]

ROOT_URLCONF = "embeddings_site.urls"
WSGI_APPLICATION = "embeddings_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "billing.notices.payment_notices",
            ],
        },
    },
]

# DATABASE_URL switches to Postgres (or anything dj-database-url reads); SQLite file otherwise.
DATABASE_URL = env_str("DATABASE_URL")
# Postgres ends any statement running longer than this, and any wait for a lock longer than
# that, so one stuck query cannot hold a request thread (or a lock others queue behind) for good.
DATABASE_STATEMENT_TIMEOUT_MS = env_int("DATABASE_STATEMENT_TIMEOUT_MS", 30_000, minimum=0)
DATABASE_LOCK_TIMEOUT_MS = env_int("DATABASE_LOCK_TIMEOUT_MS", 5_000, minimum=0)
# Each process holds at most DATABASE_POOL_MAX_SIZE Postgres connections (psycopg's pool, which
# Django 5.2 runs); a thread waits up to DATABASE_POOL_TIMEOUT_SECONDS for one. Processes x
# max size must stay under Postgres's max_connections (100 by default). 20 covers gunicorn's 16
# request threads and the background ones; 0 turns the pool off (behind pgbouncer).
DATABASE_POOL_MIN_SIZE = env_int("DATABASE_POOL_MIN_SIZE", 2, minimum=0)
DATABASE_POOL_MAX_SIZE = env_int("DATABASE_POOL_MAX_SIZE", 20, minimum=0)
DATABASE_POOL_TIMEOUT_SECONDS = env_float("DATABASE_POOL_TIMEOUT_SECONDS", 10, above=0)
if DATABASE_URL:
    # A connection that Postgres dropped (a restart, pg_terminate_backend, a failover) is noticed
    # before a request uses it, instead of failing that request.
    try:
        DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_health_checks=True)}
    except ValueError as exc:  # its messages name the scheme, never the password
        raise SettingError(f"DATABASE_URL: {exc}") from None
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        _db_options = DATABASES["default"].setdefault("OPTIONS", {})
        _db_options["options"] = " ".join(
            part
            for part in (
                str(_db_options.get("options", "")),
                f"-c statement_timeout={DATABASE_STATEMENT_TIMEOUT_MS}",
                f"-c lock_timeout={DATABASE_LOCK_TIMEOUT_MS}",
            )
            if part
        )
        if DATABASE_POOL_MAX_SIZE > 0:
            # Django requires CONN_MAX_AGE = 0 with a pool: a connection goes back to the pool at
            # the end of each request, and the pool checks it before lending it again.
            DATABASES["default"]["CONN_MAX_AGE"] = 0
            _db_options["pool"] = {
                "min_size": min(DATABASE_POOL_MIN_SIZE, DATABASE_POOL_MAX_SIZE),
                "max_size": DATABASE_POOL_MAX_SIZE,
                "timeout": DATABASE_POOL_TIMEOUT_SECONDS,
            }
        else:
            DATABASES["default"]["CONN_MAX_AGE"] = 60
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "db.sqlite3"),
            "OPTIONS": {
                # WAL + IMMEDIATE: concurrent request threads queue for the write lock instead of
                # failing with "database is locked" half-way through a transaction.
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
            # Kept open by each thread: opening a SQLite connection (and its PRAGMAs) and closing
            # it (a WAL checkpoint when it is the last) cost more than a request's own queries.
            "CONN_MAX_AGE": None,
            "CONN_HEALTH_CHECKS": True,
            # A file, not memory: the live test server and background threads see the same DB.
            "TEST": {"NAME": str(DATA_DIR / "test-db.sqlite3")},
        }
    }

REDIS_URL = env_url("REDIS_URL", schemes=("redis", "rediss", "unix"))
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_USER_MODEL = "billing.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Made at start-up with DATA_DIR. The site's own files are the embeddings_site app's static/.
STATIC_ROOT = DATA_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Hashed names (a manifest from collectstatic) in production; plain files otherwise.
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "whitenoise.storage.CompressedStaticFilesStorage"
    },
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Request bodies: anything larger is refused with 413 before it is read.
MAX_REQUEST_BYTES = env_int("MAX_REQUEST_BYTES", 20 * 1024 * 1024, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BYTES

REST_FRAMEWORK = {
    "DEFAULT_PARSER_CLASSES": ["embeddings_site.json.OrjsonParser"],
    "DEFAULT_RENDERER_CLASSES": ["embeddings_site.json.OrjsonRenderer"],
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "EXCEPTION_HANDLER": "embeddings_site.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# The OpenAPI schema of /v1 (drf-spectacular) and its reference page (Redoc, served from the
# sidecar package's static files, no CDN).
SPECTACULAR_SETTINGS = {
    "TITLE": "Embeddings API",
    "DESCRIPTION": (
        "Jina- and OpenAI-compatible embeddings. Authenticate with `Authorization: Bearer <key>`. "
        "Errors share one envelope: `detail`, `code`, `request_id` and OpenAI's `error` object."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/v1",
    "PREPROCESSING_HOOKS": ["embeddings_site.api_schema.only_public_api"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "embeddings_site.api_schema.without_trailing_slash",
        "inference.api_schema.registry_tasks",
    ],
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- The embeddings API -------------------------------------------------------------------
API_KEY_PREFIX = env_str("API_KEY_PREFIX", "jina_")
# Models used when a request names none (Jina's curl example sends no `model`).
EMBEDDINGS_DEFAULT_MODEL = env_str("EMBEDDINGS_DEFAULT_MODEL", "all-MiniLM-L6-v2")
EMBEDDINGS_MAX_INPUTS = env_int("EMBEDDINGS_MAX_INPUTS", 2048, minimum=1)
# /v1/rerank and /v2/rerank: documents per request (Cohere advises at most 1,000 too), and the
# model a request that names none is ranked with (empty: EMBEDDINGS_DEFAULT_MODEL, by cosine).
RERANK_MAX_DOCUMENTS = env_int("RERANK_MAX_DOCUMENTS", 1000, minimum=1)
RERANK_DEFAULT_MODEL = env_str("RERANK_DEFAULT_MODEL", "")
# /v1/classify and /v1/train, with Jina's bounds: inputs per request, labels (a list, or groups
# of labels), characters per label, labelled examples per request, training iterations, and
# what one classifier may hold over its updates. Zero-shot scores are a softmax of the cosine
# similarities divided by CLASSIFY_TEMPERATURE.
CLASSIFY_MAX_INPUTS = env_int("CLASSIFY_MAX_INPUTS", 512, minimum=1)
CLASSIFY_MAX_LABELS = env_int("CLASSIFY_MAX_LABELS", 512, minimum=1)
CLASSIFY_MAX_LABEL_GROUPS = env_int("CLASSIFY_MAX_LABEL_GROUPS", 8, minimum=1)
CLASSIFY_MAX_LABELS_PER_GROUP = env_int("CLASSIFY_MAX_LABELS_PER_GROUP", 64, minimum=1)
CLASSIFY_MAX_LABEL_CHARS = env_int("CLASSIFY_MAX_LABEL_CHARS", 256, minimum=1)
CLASSIFY_TEMPERATURE = env_float("CLASSIFY_TEMPERATURE", 0.05, above=0)
TRAIN_MAX_EXAMPLES = env_int("TRAIN_MAX_EXAMPLES", 512, minimum=1)
TRAIN_DEFAULT_ITERS = env_int("TRAIN_DEFAULT_ITERS", 10, minimum=1)
TRAIN_MAX_ITERS = env_int("TRAIN_MAX_ITERS", 100, minimum=1)
CLASSIFIER_MAX_SAMPLES = env_int("CLASSIFIER_MAX_SAMPLES", 2048, minimum=1)
CLASSIFIER_MAX_LABELS = env_int("CLASSIFIER_MAX_LABELS", 256, minimum=1)
# Threads torch may use for one forward pass; 0 leaves torch's own default (all cores).
TORCH_NUM_THREADS = env_int("TORCH_NUM_THREADS", 0, minimum=0)
# Where CPU models on the onnx runtimes keep their exported graphs. Entries are named by a hash
# of the checkpoint and the exporter's versions and written atomically, so processes and data
# directories may share one (the tests point every gateway of a run at one).
ONNX_CACHE_DIR = Path(env_str("ONNX_CACHE_DIR", str(DATA_DIR / "onnx")))
# Dynamic batching of in-process CPU models: concurrent requests share forward passes of at
# most EMBEDDINGS_MAX_BATCH_TOKENS padded tokens, a pass waiting up to EMBEDDINGS_BATCH_WAIT_MS
# for requests to join it.
EMBEDDINGS_DYNAMIC_BATCHING = env_bool("EMBEDDINGS_DYNAMIC_BATCHING", default=True)
EMBEDDINGS_BATCH_WAIT_MS = env_float("EMBEDDINGS_BATCH_WAIT_MS", 0, minimum=0)
# 2048: on CPU, smaller passes beat bigger ones (bench/cpu_backend.py --max-batch-tokens).
EMBEDDINGS_MAX_BATCH_TOKENS = env_int("EMBEDDINGS_MAX_BATCH_TOKENS", 2048, minimum=1)
# return_multivector answers a vector per token: at most this many tokens per request, which
# bounds the response (16,384 × 384 floats is about 80 MB of JSON).
EMBEDDINGS_MULTIVECTOR_MAX_TOKENS = env_int("EMBEDDINGS_MULTIVECTOR_MAX_TOKENS", 16_384, minimum=1)
# /v1/tokenize reads at most this many characters per request (all its texts together).
TOKENIZE_MAX_CHARACTERS = env_int("TOKENIZE_MAX_CHARACTERS", 1_000_000, minimum=1)
# Group commit: concurrent requests' debits and served marks share one transaction per group
# (each request still waits for its own to commit). Lanes: writers per process on Postgres,
# keys split among them by id (SQLite has one writer, so one lane); at most MAX writes a group.
LEDGER_GROUP_COMMIT = env_bool("LEDGER_GROUP_COMMIT", default=True)
LEDGER_GROUP_LANES = env_int("LEDGER_GROUP_LANES", 4, minimum=1)
LEDGER_GROUP_MAX = env_int("LEDGER_GROUP_MAX", 128, minimum=1)
# A request of at most this many characters (texts and token ids, no images) is counted before
# admission, so one limiter call admits it with its exact tokens (tokenizing that much costs
# less than the second call would).
PREADMIT_COUNT_MAX_CHARACTERS = env_int("PREADMIT_COUNT_MAX_CHARACTERS", 4096, minimum=0)
# Active keys are cached this many seconds per process: a revocation reaches every process
# within that time (at once in the one that revoked). 0 turns the cache off.
KEY_CACHE_SECONDS = env_float("KEY_CACHE_SECONDS", 5, minimum=0)
# Registry rows are cached as long per process (an edit clears the cache of its own process).
MODEL_CACHE_SECONDS = env_float("MODEL_CACHE_SECONDS", 5, minimum=0)
# /metrics answers `Authorization: Bearer <METRICS_TOKEN>` and signed-in staff; 404 otherwise.
METRICS_TOKEN = env_str("METRICS_TOKEN")
# Load enabled models in the background when the server starts, so the first request is fast.
EMBEDDINGS_WARM_ON_START = env_bool("EMBEDDINGS_WARM_ON_START", default=True)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        # JSON lines or plain text, as LOG_FORMAT says (embeddings_site.log_format).
        "default": {"()": "embeddings_site.log_format.formatter"},
    },
    # Every record gets the fields of the request (or task) it belongs to.
    "filters": {"context": {"()": "embeddings_site.log_context.LogContextFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "default",
            "filters": ["context"],
        }
    },
    "root": {
        "handlers": ["console"],
        "level": env_choice("LOG_LEVEL", "INFO", {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}),
    },
    "loggers": {
        # Django logs every 4xx as a warning with the request line; the API's own log is enough.
        "django.request": {"level": "ERROR"},
    },
}

# --- Logs and traces ---
# `json`: one JSON object per line from every process (gunicorn's access log included), with
# request_id, key_prefix, endpoint, model, status, code and latency_ms; `text` (the default):
# plain lines with the same fields at their end.
LOG_FORMAT = env_choice("LOG_FORMAT", "text", {"text", "json"})
# One summary record per /v1 request ("request finished", logger embeddings_site.requests),
# at INFO; `false` leaves it out (gunicorn's access log still has one line per request).
LOG_REQUESTS = env_bool("LOG_REQUESTS", default=True)
# Celery workers log through LOGGING above instead of installing their own root handler.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# OpenTelemetry traces go to this OTLP/HTTP collector (its base URL: spans are posted to
# <endpoint>/v1/traces); unset, no SDK is installed and tracing costs nothing. The SDK reads
# the other standard OTEL_* variables itself.
OTEL_EXPORTER_OTLP_ENDPOINT = env_url("OTEL_EXPORTER_OTLP_ENDPOINT", schemes={"http", "https"})
# The service name spans carry; empty: embeddings-gateway, embeddings-celery, embeddings-manage.
OTEL_SERVICE_NAME = env_str("OTEL_SERVICE_NAME")

if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

# --- Celery: Redis broker when configured ---------------------------------------------------
# Without a broker nothing is sent to Celery: background tasks run on thread pools of the
# gateway (embeddings_site.background; batch jobs on BATCH_LOCAL_WORKERS threads).
CELERY_BROKER_URL = env_url("CELERY_BROKER_URL", REDIS_URL, schemes=sorted(TRANSPORT_ALIASES))
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]

# --- Metering: balances, tiers, the limiter ----------------------------------------------
# Tokens granted to the first key of a new user (the Jina API gives new users 10M).
TRIAL_TOKENS = env_int("TRIAL_TOKENS", 10_000_000, minimum=0)
# A playground visitor without an account gets a key with this many tokens (0: none).
VISITOR_TRIAL_TOKENS = env_int("VISITOR_TRIAL_TOKENS", 100_000, minimum=0)
# Visitor trial keys per UTC day, per client address and per its network (/24 for IPv4, /56
# for IPv6), counted in the database: exact across gateways, unlike the hourly per-IP limit.
VISITOR_TRIALS_PER_IP_PER_DAY = env_int("VISITOR_TRIALS_PER_IP_PER_DAY", 3, minimum=0)
VISITOR_TRIALS_PER_NETWORK_PER_DAY = env_int("VISITOR_TRIALS_PER_NETWORK_PER_DAY", 10, minimum=0)
# Default tiers as in the seeds. RATE_LIMIT_TIERS, a JSON object of tier -> {rpm, tpm,
# concurrency}, adds tiers and replaces those of the same name; a key whose tier is not here
# gets "standard"'s limits.
RATE_LIMIT_TIERS: dict[str, dict[str, int]] = {
    "standard": {"rpm": 500, "tpm": 1_000_000, "concurrency": 10},
    "premium": {"rpm": 2_000, "tpm": 5_000_000, "concurrency": 50},
    **env_json("RATE_LIMIT_TIERS", {}, setting_shapes.rate_limit_tiers),
}
RATE_LIMIT_WINDOW_SECONDS = env_int("RATE_LIMIT_WINDOW_SECONDS", 60, minimum=1)
# The limiter lives in Redis when one is configured; in the process otherwise.
RATE_LIMIT_REDIS_URL = env_url(
    "RATE_LIMIT_REDIS_URL", REDIS_URL, schemes=("redis", "rediss", "unix")
)
# When Redis cannot be reached: "local" limits per process until it is back (the default:
# the service stays up, billing stays exact in the database), "closed" answers 503, "open"
# admits without limits.
RATE_LIMIT_ON_REDIS_ERROR = env_choice(
    "RATE_LIMIT_ON_REDIS_ERROR", "local", ("local", "closed", "open")
)
# Every /v1 request must be answered within this many seconds of its arrival (well under
# gunicorn's --timeout); past it the work is abandoned, refunded and answered 504.
REQUEST_TIMEOUT_SECONDS = env_float("REQUEST_TIMEOUT_SECONDS", 60, above=0)
# Behind a proxy that stamps X-Request-Start (nginx: `proxy_set_header X-Request-Start
# "t=${msec}"`), count the deadline and latency from that stamp: time queued before a gunicorn
# thread picked the request up counts too. Off by default (a client could send the header).
TRUST_X_REQUEST_START = env_bool("TRUST_X_REQUEST_START", default=False)
# A concurrency slot held by a process that died is given back after this long: the deadline
# plus a margin, so a killed gateway's slots come back within about one deadline.
CONCURRENCY_LEASE_SECONDS = env_int(
    "CONCURRENCY_LEASE_SECONDS", int(REQUEST_TIMEOUT_SECONDS) + 10, minimum=1
)
# Shorter, and a slot would be given back while its request still runs: more than the
# concurrency limit would run at once.
require(
    CONCURRENCY_LEASE_SECONDS > REQUEST_TIMEOUT_SECONDS,
    f"CONCURRENCY_LEASE_SECONDS ({CONCURRENCY_LEASE_SECONDS}) must be more than"
    f" REQUEST_TIMEOUT_SECONDS ({REQUEST_TIMEOUT_SECONDS:g})",
)
# A request still "pending" this long after its debit is from a dead gateway: refund it. The
# sweeper runs in every gateway and worker process (USAGE_SWEEP_INTERVAL_SECONDS apart).
USAGE_ABANDONED_AFTER_SECONDS = env_int(
    "USAGE_ABANDONED_AFTER_SECONDS", int(REQUEST_TIMEOUT_SECONDS) + 30, minimum=1
)
# Shorter, and the sweeper would refund requests that are still running.
require(
    USAGE_ABANDONED_AFTER_SECONDS > REQUEST_TIMEOUT_SECONDS,
    f"USAGE_ABANDONED_AFTER_SECONDS ({USAGE_ABANDONED_AFTER_SECONDS}) must be more than"
    f" REQUEST_TIMEOUT_SECONDS ({REQUEST_TIMEOUT_SECONDS:g})",
)
USAGE_SWEEP_INTERVAL_SECONDS = env_float("USAGE_SWEEP_INTERVAL_SECONDS", 15, above=0)
# Per-process load shedding: a model whose queue already holds this many tokens answers new
# requests 503 SERVICE_OVERLOADED with Retry-After at once, instead of queueing them.
EMBEDDINGS_MAX_QUEUED_TOKENS = env_int("EMBEDDINGS_MAX_QUEUED_TOKENS", 65536, minimum=1)
# Usage rows of requests that were never charged are written in batches off the request path.
USAGE_FLUSH_INTERVAL_SECONDS = env_float("USAGE_FLUSH_INTERVAL_SECONDS", 1.0, minimum=0)
# Run the sweeper and daily rollups in a thread of the gateway (the embedded default); with a
# Celery broker, Celery beat runs them instead.
BACKGROUND_MAINTENANCE = env_bool("BACKGROUND_MAINTENANCE", default=True)
CELERY_BEAT_SCHEDULE = {
    "sweep-abandoned-usage": {"task": "metering.tasks.sweep_abandoned_usage", "schedule": 60.0},
    "rollup-recent-usage": {"task": "metering.tasks.rollup_recent_usage", "schedule": 300.0},
}

# --- Per-IP limits on anonymous endpoints (django-ratelimit, on the cache above) ----------
IP_RATE_LIMIT_ANONYMOUS = env_rate("IP_RATE_LIMIT_ANONYMOUS", "300/m")
IP_RATE_LIMIT_LOGIN = env_rate("IP_RATE_LIMIT_LOGIN", "20/m")
IP_RATE_LIMIT_SIGNUP = env_rate("IP_RATE_LIMIT_SIGNUP", "20/h")
IP_RATE_LIMIT_PASSWORD_RESET = env_rate("IP_RATE_LIMIT_PASSWORD_RESET", "10/h")
IP_RATE_LIMIT_TRIAL_KEY = env_rate("IP_RATE_LIMIT_TRIAL_KEY", "10/h")
IP_RATE_LIMIT_FORMS = env_rate("IP_RATE_LIMIT_FORMS", "60/m")
# The key box (/billing/key/): pasted-key lookups per IP.
IP_RATE_LIMIT_KEY_LOOKUP = env_rate("IP_RATE_LIMIT_KEY_LOOKUP", "20/h")
# Behind a reverse proxy, its addresses or networks (CIDR), comma-separated: from these alone
# X-Forwarded-For is believed, right-most untrusted entry first. None by default: the client is
# REMOTE_ADDR. Every per-IP limit counts embeddings_site.ip_limits.client_ip.
TRUSTED_PROXIES = env_networks("TRUSTED_PROXIES", [])
RATELIMIT_IP_META_KEY = "embeddings_site.ip_limits.client_ip"
# The old way read any header a client could set; refuse it rather than quietly count every
# client as the proxy.
env_retired(
    "RATELIMIT_IP_META_KEY",
    "unset it and set TRUSTED_PROXIES to the proxy's address (e.g. TRUSTED_PROXIES=10.0.0.0/8)",
)

# --- Images ------------------------------------------------------------------------------
IMAGE_MAX_BYTES = env_int("IMAGE_MAX_BYTES", 8 * 1024 * 1024, minimum=1)
IMAGE_MAX_PIXELS = env_int("IMAGE_MAX_PIXELS", 40_000_000, minimum=1)
IMAGE_FETCH_CONNECT_TIMEOUT = env_float("IMAGE_FETCH_CONNECT_TIMEOUT", 3, above=0)
IMAGE_FETCH_READ_TIMEOUT = env_float("IMAGE_FETCH_READ_TIMEOUT", 5, above=0)
IMAGE_FETCH_DEADLINE = env_float("IMAGE_FETCH_DEADLINE", 10, above=0)
# One request's image URLs load together: at most this many URLs, this many fetched bytes in
# all (each image still at most IMAGE_MAX_BYTES), IMAGE_FETCH_CONCURRENCY fetches at a time, and
# IMAGE_FETCH_DEADLINE (or what is left of the request's deadline, if less) for all of them.
IMAGE_MAX_URLS_PER_REQUEST = env_int("IMAGE_MAX_URLS_PER_REQUEST", 32, minimum=0)
IMAGE_FETCH_MAX_TOTAL_BYTES = env_int("IMAGE_FETCH_MAX_TOTAL_BYTES", 64 * 1024 * 1024, minimum=1)
IMAGE_FETCH_CONCURRENCY = env_int("IMAGE_FETCH_CONCURRENCY", 8, minimum=1)
# host:port pairs fetched even when they resolve to a non-public address. Empty in production;
# the tests name their local image server here and nothing else.
IMAGE_FETCH_ALLOWED_HOSTS: list[str] = env_list("IMAGE_FETCH_ALLOWED_HOSTS", [])
# Every URL a client hands the server (images, a batch's input_url and webhook) is resolved
# within this many seconds (getaddrinfo has no timeout of its own), or refused.
OUTBOUND_DNS_TIMEOUT_SECONDS = env_float("OUTBOUND_DNS_TIMEOUT_SECONDS", 2, above=0)

# --- vLLM workers ------------------------------------------------------------------------
# Shared secret the worker launcher presents to register and heartbeat; unset disables it.
WORKER_TOKEN = env_str("WORKER_TOKEN")
# A launcher worker without a heartbeat for this long is out of the pool.
WORKER_HEARTBEAT_TTL_SECONDS = env_int("WORKER_HEARTBEAT_TTL_SECONDS", 30, minimum=1)
WORKER_REQUEST_TIMEOUT_SECONDS = env_float("WORKER_REQUEST_TIMEOUT_SECONDS", 30, above=0)
WORKER_CONNECT_TIMEOUT_SECONDS = env_float("WORKER_CONNECT_TIMEOUT_SECONDS", 2, above=0)
WORKER_HEALTH_INTERVAL_SECONDS = env_float("WORKER_HEALTH_INTERVAL_SECONDS", 2, above=0)
# Circuit breaker: this many failures in a row take a worker out for WORKER_BREAKER_SECONDS.
WORKER_BREAKER_FAILURES = env_int("WORKER_BREAKER_FAILURES", 2, minimum=1)
WORKER_BREAKER_SECONDS = env_float("WORKER_BREAKER_SECONDS", 5, minimum=0)

# --- Payments (Stripe) ------------------------------------------------------------------
# Without STRIPE_SECRET_KEY the top-up page explains how to configure payments; admins can
# still grant tokens (`manage.py grant`).
STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY")
STRIPE_PUBLISHABLE_KEY = env_str("STRIPE_PUBLISHABLE_KEY")
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET")
# Another API base (localstripe in the tests); empty means Stripe itself.
STRIPE_API_BASE = env_url("STRIPE_API_BASE", schemes=("http", "https"))
STRIPE_JS_URL = env_url("STRIPE_JS_URL", "https://js.stripe.com/v3/", schemes=("https", "http"))
# Signed webhooks older (or newer) than this are refused.
STRIPE_WEBHOOK_TOLERANCE_SECONDS = env_int("STRIPE_WEBHOOK_TOLERANCE_SECONDS", 300, minimum=1)
# Token packs for sale: id, name, tokens, amount in the currency's minor unit, currency.
TOKEN_PACKS: list[dict[str, object]] = env_json(
    "TOKEN_PACKS",
    [
        {
            "id": "pack-1b",
            "name": "1 billion tokens",
            "tokens": 1_000_000_000,
            "amount": 5_000,
            "currency": "usd",
        },
        {
            "id": "pack-11b",
            "name": "11 billion tokens",
            "tokens": 11_000_000_000,
            "amount": 50_000,
            "currency": "usd",
        },
    ],
    setting_shapes.token_packs,
)
# Where links in e-mails point.
SITE_URL = env_url("SITE_URL", "http://127.0.0.1:8000", schemes=("http", "https")).rstrip("/")

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1, maximum=65535)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", default=False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Embeddings <no-reply@localhost>")

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "playground"

# --- Batch jobs (/v1/batch/*, /v1/files, /v1/batches) ------------------------------------
# At most this many request lines per job, and bytes per input file (an upload also has to
# fit in MAX_REQUEST_BYTES).
BATCH_MAX_LINES = env_int("BATCH_MAX_LINES", 50_000, minimum=1)
BATCH_MAX_FILE_BYTES = env_int("BATCH_MAX_FILE_BYTES", MAX_REQUEST_BYTES, minimum=1)
# Lines are embedded and charged in chunks of about this many tokens (a longer line alone).
BATCH_CHUNK_TOKENS = env_int("BATCH_CHUNK_TOKENS", 8192, minimum=1)
# A job's outputs are deleted (and an unfinished job expires) this long after it was created;
# uploaded files are kept for BATCH_FILE_EXPIRES_AFTER_SECONDS (OpenAI's 30 days).
BATCH_EXPIRES_AFTER_SECONDS = env_int("BATCH_EXPIRES_AFTER_SECONDS", 24 * 3600, minimum=1)
BATCH_FILE_EXPIRES_AFTER_SECONDS = env_int(
    "BATCH_FILE_EXPIRES_AFTER_SECONDS", 30 * 24 * 3600, minimum=1
)
# A runner holds a job for this long after each chunk; when it dies, another resumes the job
# after the lease runs out. Keep it well above the time one chunk takes.
BATCH_LEASE_SECONDS = env_int("BATCH_LEASE_SECONDS", 120, minimum=1)
# A job that stops this many times without finishing fails (its remaining lines in errors).
BATCH_MAX_RUNS = env_int("BATCH_MAX_RUNS", 5, minimum=1)
# How often stalled jobs are resumed, expired outputs deleted and webhooks retried (beat, or a
# gateway thread on the embedded default); a pending job is sent again after waiting this long.
BATCH_MAINTENANCE_INTERVAL_SECONDS = env_int("BATCH_MAINTENANCE_INTERVAL_SECONDS", 30, minimum=1)
BATCH_REQUEUE_PENDING_AFTER_SECONDS = env_int("BATCH_REQUEUE_PENDING_AFTER_SECONDS", 600, minimum=1)
# Threads that run jobs in a gateway process when no broker is configured.
BATCH_LOCAL_WORKERS = env_int("BATCH_LOCAL_WORKERS", 2, minimum=1)
BATCH_INPUT_FETCH_DEADLINE = env_float("BATCH_INPUT_FETCH_DEADLINE", 60, above=0)
BATCH_WEBHOOK_TIMEOUT_SECONDS = env_float("BATCH_WEBHOOK_TIMEOUT_SECONDS", 10, above=0)
BATCH_WEBHOOK_MAX_ATTEMPTS = env_int("BATCH_WEBHOOK_MAX_ATTEMPTS", 5, minimum=1)
BATCH_WEBHOOK_RETRY_SECONDS = env_int("BATCH_WEBHOOK_RETRY_SECONDS", 30, minimum=1)
# Quotas per key, checked (under the key's row lock) before a job or file is stored; 0 turns one
# off. Active (pending or processing) jobs, and the request lines they hold between them (an
# input_url job's lines count once fetched) -> 429 RATE_BATCH_QUOTA_EXCEEDED; input_url jobs
# created in the last hour (each one makes this server fetch a file) -> the same code with
# Retry-After; bytes of unexpired uploads -> 429 RATE_FILE_STORAGE_QUOTA_EXCEEDED.
BATCH_MAX_ACTIVE_JOBS_PER_KEY = env_int("BATCH_MAX_ACTIVE_JOBS_PER_KEY", 10, minimum=0)
BATCH_MAX_ACTIVE_LINES_PER_KEY = env_int("BATCH_MAX_ACTIVE_LINES_PER_KEY", 200_000, minimum=0)
BATCH_MAX_URL_JOBS_PER_HOUR_PER_KEY = env_int("BATCH_MAX_URL_JOBS_PER_HOUR_PER_KEY", 20, minimum=0)
BATCH_MAX_STORED_BYTES_PER_KEY = env_int(
    "BATCH_MAX_STORED_BYTES_PER_KEY", 100 * 1024 * 1024, minimum=0
)
# host:port pairs an input_url or webhook_url may name although they are not public addresses.
# Empty in production; the tests name their local servers here.
BATCH_URL_ALLOWED_HOSTS: list[str] = env_list("BATCH_URL_ALLOWED_HOSTS", [])
CELERY_BEAT_SCHEDULE["batch-maintenance"] = {
    "task": "batch.tasks.batch_maintenance",
    "schedule": float(BATCH_MAINTENANCE_INTERVAL_SECONDS),
}
