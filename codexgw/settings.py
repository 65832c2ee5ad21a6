"""Settings, read from the environment (every variable is listed in ``.env.example``).

With no environment at all the gateway runs on the embedded default: SQLite, the in-memory
channel layer, in-process stores, periodic jobs on an in-process timer and generated local
secrets. ``DATABASE_URL`` switches to PostgreSQL, ``REDIS_URL`` to the Redis channel layer,
Redis-backed stores and the Celery broker.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

from codexgw.env import (
    env_bool,
    env_choice,
    env_duration,
    env_int,
    env_list,
    env_secret,
    env_str,
)
from codexgw.local_secrets import LOCAL_SECRET_NAMES, load_or_create

# Lets typed code subscript Django generics at runtime (admin.ModelAdmin[Executor], ...).
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("CODEXGW_DATA_DIR", str(BASE_DIR / "var"))).resolve()

DATABASE_URL = env_str("DATABASE_URL") or env_str("CXG_DATABASE_URL")
REDIS_URL = env_str("REDIS_URL")

# --- secrets -----------------------------------------------------------------------------
LOCAL_SECRETS = env_bool("CODEXGW_LOCAL_SECRETS", default=not DATABASE_URL)
_secrets = {name: env_secret(name) for name in LOCAL_SECRET_NAMES}
LOCAL_SECRETS_FILE = DATA_DIR / "local-secrets.json"
if LOCAL_SECRETS and not all(_secrets.values()):
    _generated = load_or_create(LOCAL_SECRETS_FILE)
    _secrets = {name: value or _generated[name] for name, value in _secrets.items()}

SECRET_KEY = _secrets["DJANGO_SECRET_KEY"]
if not SECRET_KEY:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY is required when CODEXGW_LOCAL_SECRETS is off")
# Keys for encrypting registration tokens at rest; the first encrypts, all decrypt (rotation).
TOKEN_ENCRYPTION_KEYS = [k.strip() for k in _secrets["CODEXGW_TOKEN_ENCRYPTION_KEYS"].split(",") if k.strip()]
if not TOKEN_ENCRYPTION_KEYS:
    raise ImproperlyConfigured("CODEXGW_TOKEN_ENCRYPTION_KEYS is required when CODEXGW_LOCAL_SECRETS is off")
# An empty value means "not configured": the routes guarded by it refuse every request.
CXG_CAPTOKEN_HMAC_SECRET = _secrets["CXG_CAPTOKEN_HMAC_SECRET"]
CXG_INTERNAL_SHARED_SECRET = _secrets["CXG_INTERNAL_SHARED_SECRET"]
CXG_AGENTSERVER_INTERNAL_SECRET = _secrets["CXG_AGENTSERVER_INTERNAL_SECRET"]
# Bearer token of GET /metrics (Prometheus); unset: the endpoint answers 503.
CXG_METRICS_TOKEN = _secrets["CXG_METRICS_TOKEN"]

# --- gateway behaviour ---------------------------------------------------------------------
CODEXGW_ROLES = set(env_list("CODEXGW_ROLES", ["exec", "app"]))
if not {"exec", "app"} >= CODEXGW_ROLES:
    raise ImproperlyConfigured(f"CODEXGW_ROLES={sorted(CODEXGW_ROLES)} may only name exec and app")
CXG_PORT = env_int("CXG_PORT", 6060, minimum=0, maximum=65535)
CXG_BIND = env_str("CXG_BIND", "127.0.0.1" if LOCAL_SECRETS else "0.0.0.0")  # noqa: S104 - a server binds all
CXG_PUBLIC_WS_BASE_URL = env_str("CXG_PUBLIC_WS_BASE_URL")
CXG_PUBLIC_HTTPS_BASE_URL = env_str("CXG_PUBLIC_HTTPS_BASE_URL")
CXG_SELF_HTTP_BASE_URL = env_str("CXG_SELF_HTTP_BASE_URL")
CXG_AGENTSERVER_INTERNAL_URL = env_str("CXG_AGENTSERVER_INTERNAL_URL")
# Who answers for user tokens, workspaces and model credentials (workspaces/identity.py):
# "agentserver" (the external control plane) or "builtin" (this gateway's own workspaces,
# members and access tokens). Default: agentserver when its URL is set, else builtin.
CODEXGW_IDENTITY_BACKEND = env_choice(
    "CODEXGW_IDENTITY_BACKEND", "agentserver" if CXG_AGENTSERVER_INTERNAL_URL else "builtin", {"agentserver", "builtin"}
)
_BUILTIN = CODEXGW_IDENTITY_BACKEND == "builtin"
CXG_RELAY_DEFAULT_TTL = env_duration("CXG_RELAY_DEFAULT_TTL", 300.0, minimum=1.0)
CXG_RELAY_MAX_PER_WORKSPACE = env_int("CXG_RELAY_MAX_PER_WORKSPACE", 16, minimum=1)
# Relay bytes cross Redis in chunks of this size, at most this many of them unread per relay.
CXG_RELAY_CHUNK_BYTES = env_int("CXG_RELAY_CHUNK_BYTES", 256 * 1024, minimum=1024, maximum=8 * 1024 * 1024)
CXG_RELAY_BUFFERED_CHUNKS = env_int("CXG_RELAY_BUFFERED_CHUNKS", 8, minimum=1, maximum=1024)
CXG_REVOKED_SET_CAPACITY = env_int("CXG_REVOKED_SET_CAPACITY", 10_000, minimum=1)
CXG_REVOKED_PRUNE_INTERVAL = env_duration("CXG_REVOKED_PRUNE_INTERVAL", 60.0, minimum=1.0)
CXG_SIGV4_MAX_SKEW = env_duration("CXG_SIGV4_MAX_SKEW", 300.0, minimum=1.0)
# Lifetime of the capability token minted per app-server spawn for its env-mcp.
CXG_CAPTOKEN_TTL = env_duration("CXG_CAPTOKEN_TTL", 24 * 3600.0, minimum=1.0)
CXG_WS_TICKET_TTL = env_duration("CXG_WS_TICKET_TTL", 300.0, minimum=1.0)
CXG_PRESENCE_TTL = env_duration("CXG_PRESENCE_TTL", 90.0, minimum=5.0)
CXG_BRIDGE_RESUME_WINDOW = env_duration("CXG_BRIDGE_RESUME_WINDOW", 80.0, minimum=0.5)
CXG_WS_PING_INTERVAL = env_duration("CXG_WS_PING_INTERVAL", 20.0, minimum=0.5)
CXG_WS_PING_TIMEOUT = env_duration("CXG_WS_PING_TIMEOUT", 30.0, minimum=0.5)
CXG_BCRYPT_ROUNDS = env_int("CXG_BCRYPT_ROUNDS", 10, minimum=4, maximum=15)
CXG_EXECUTOR_CONCURRENT_REQUESTS = env_int("CXG_EXECUTOR_CONCURRENT_REQUESTS", 16, minimum=1)
CODEXGW_REDIS_PREFIX = env_str("CODEXGW_REDIS_PREFIX", "cxg:")
CODEXGW_READYZ_TIMEOUT = env_duration("CODEXGW_READYZ_TIMEOUT", 2.0, minimum=0.1)
# Graceful drain on SIGTERM/SIGINT (codexgw/drain.py; docs/operations.md).
CODEXGW_DRAIN_TIMEOUT = env_duration("CODEXGW_DRAIN_TIMEOUT", 25.0, minimum=1.0)
CODEXGW_DRAIN_READINESS_DELAY = env_duration("CODEXGW_DRAIN_READINESS_DELAY", 2.0)

# --- app gateway (appgateway/; docs/app-gateway.md) -------------------------------------------
# Default binary: the pinned @openai/codex npm package when installed (scripts/run and scripts/test
# run npm ci). Its platform package is looked up the way node resolves it from the package's own
# directory (nested, then hoisted), never an older Codex installed under another name (codex-older).
_PINNED_CODEX = [
    binary
    for packages in ("node_modules/@openai/codex/node_modules/@openai", "node_modules/@openai")
    for binary in sorted(BASE_DIR.glob(f"{packages}/codex-linux-*/vendor/*/bin/codex"))
]
CXG_CODEX_BIN = env_str("CXG_CODEX_BIN", str(_PINNED_CODEX[0]) if _PINNED_CODEX else "codex")
# Per-workspace 0700 CODEX_HOMEs. Not under /tmp (the reference's default): codex (0.171.0) will not
# create its helper binaries under /tmp and then tells every TUI that bubblewrap is missing.
CXG_TMP_ROOT = env_str("CXG_TMP_ROOT", str(DATA_DIR / "codex-app-gateway"))
CXG_IDLE_SHUTDOWN = env_duration("CXG_IDLE_SHUTDOWN", 1800.0, minimum=0.1)
CXG_APP_SERVER_STOP_GRACE = env_duration("CXG_APP_SERVER_STOP_GRACE", 10.0, minimum=0.0)
CXG_APP_SERVER_LEASE_TTL = env_duration("CXG_APP_SERVER_LEASE_TTL", 15.0, minimum=0.3)
CXG_CHECKPOINT_INTERVAL = env_duration("CXG_CHECKPOINT_INTERVAL", 300.0, minimum=1.0)
CXG_MODEL_TOKEN_REFRESH_INTERVAL = env_duration("CXG_MODEL_TOKEN_REFRESH_INTERVAL", 60.0, minimum=1.0)
# Built-in mode talks to OpenAI unless told otherwise; agentserver mode to its llmproxy. The
# provider id is not "openai": codex's built-in provider of that name would win over ours.
CXG_MODEL_PROVIDER = env_str("CXG_MODEL_PROVIDER", "codexgw" if _BUILTIN else "modelserver")
# Built-in mode: empty, codex's own default model (the newest the pinned codex knows).
CXG_MODEL = env_str("CXG_MODEL", "" if _BUILTIN else "gpt-5.5")
CXG_MODEL_PROVIDER_NAME = env_str("CXG_MODEL_PROVIDER_NAME", "OpenAI" if _BUILTIN else CXG_MODEL_PROVIDER)
CXG_MODEL_PROVIDER_BASE_URL = env_str(
    "CXG_MODEL_PROVIDER_BASE_URL", "https://api.openai.com/v1" if _BUILTIN else "http://llmproxy:8085/v1"
)
CXG_MODEL_PROVIDER_ENV_KEY = env_str("CXG_MODEL_PROVIDER_ENV_KEY", "CODEX_API_KEY")
CXG_MODEL_PROVIDER_WIRE_API = env_choice("CXG_MODEL_PROVIDER_WIRE_API", "responses", {"responses", "chat"})
# The model key; built-in mode also takes OPENAI_API_KEY. Only the gateway's model proxy holds it.
CXG_CODEX_API_KEY = env_secret("CXG_CODEX_API_KEY") or (env_secret("OPENAI_API_KEY") if _BUILTIN else "")
CXG_PROJECT_TRUSTED_PATHS = env_list("CXG_PROJECT_TRUSTED_PATHS", ["/tmp"])  # noqa: S108 - the Go default
CXG_APPROVAL_POLICY = env_choice("CXG_APPROVAL_POLICY", "never", {"untrusted", "on-failure", "on-request", "never"})
CXG_SANDBOX_MODE = env_choice(
    "CXG_SANDBOX_MODE", "workspace-write", {"read-only", "workspace-write", "danger-full-access"}
)
# The TUI proxy answers the app-server's approval requests itself ("accept") or lets the TUI answer ("forward").
CXG_APPROVAL_MODE = env_choice("CXG_APPROVAL_MODE", "accept", {"accept", "forward"})
# /api/turns: a workspace's broker connection is closed after this long without a frame.
CXG_BROKER_POOL_IDLE_TTL = env_duration("CXG_BROKER_POOL_IDLE_TTL", 1800.0, minimum=0.1)
CXG_S3_BUCKET = env_str("CXG_S3_BUCKET")
CXG_S3_ENDPOINT = env_str("CXG_S3_ENDPOINT")
if CXG_S3_ENDPOINT and not CXG_S3_ENDPOINT.startswith(("http://", "https://")):
    raise ImproperlyConfigured(f"CXG_S3_ENDPOINT={CXG_S3_ENDPOINT!r} must be an http:// or https:// URL")

# --- Django --------------------------------------------------------------------------------
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["*"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("CXG_TRUST_X_FORWARDED_PROTO", True) else None

INSTALLED_APPS = [
    "daphne",
    # Before the admin: its templates (admin/base_site.html) override the admin's own.
    "codexgw",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "executors",
    "workspaces",
    "bridge",
    "sdk",
    "appgateway",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "codexgw.urls"
ASGI_APPLICATION = "codexgw.asgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("CODEXGW_DB_CONN_MAX_AGE", 60))}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "codexgw.sqlite3"),
            "OPTIONS": {"timeout": 20},
        }
    }
DATABASES["default"].setdefault("OPTIONS", {})
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A database outage must answer 503 quickly, not hang a request for the OS TCP timeout.
    DATABASES["default"]["OPTIONS"].setdefault("connect_timeout", env_int("CODEXGW_DB_CONNECT_TIMEOUT", 3, minimum=1))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
# "codexhome": persisted CODEX_HOME archives (appgateway/persistence.py); S3 when CXG_S3_BUCKET is set.
STORAGES: dict[str, Any] = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "codexhome": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {
            "location": str(DATA_DIR / "codexhome"),
            "file_permissions_mode": 0o600,
            "directory_permissions_mode": 0o700,
        },
    },
}
if CXG_S3_BUCKET:
    STORAGES["codexhome"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": CXG_S3_BUCKET,
            "endpoint_url": CXG_S3_ENDPOINT or None,
            "region_name": env_str("CXG_S3_REGION", "us-east-1"),
            "access_key": env_secret("CXG_S3_ACCESS_KEY_ID") or None,  # unset: boto3's default chain
            "secret_key": env_secret("CXG_S3_SECRET_ACCESS_KEY") or None,
            "addressing_style": "path" if env_bool("CXG_S3_PATH_STYLE", False) else None,
            "file_overwrite": True,
            "default_acl": None,
        },
    }

# --- channel layer ---------------------------------------------------------------------------
CHANNEL_LAYERS: dict[str, Any]
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # One Redis inbox per process, one command per hop (codexgw/channel_layer.py).
            "BACKEND": "codexgw.channel_layer.RedisInboxChannelLayer",
            "CONFIG": {
                "url": REDIS_URL,
                "prefix": f"{CODEXGW_REDIS_PREFIX}layer:",
                "capacity": env_int("CODEXGW_CHANNEL_CAPACITY", 5000, minimum=100),
                "expiry": 60,
                # Between processes over TCP, Redis for addresses and fallback (codexgw/layer_direct.py).
                "direct": env_bool("CODEXGW_LAYER_DIRECT", True),
                "direct_host": env_str("CODEXGW_LAYER_DIRECT_HOST", "127.0.0.1"),
                "direct_port": env_int("CODEXGW_LAYER_DIRECT_PORT", 0, minimum=0, maximum=65535),
                "direct_advertise": env_str("CODEXGW_LAYER_DIRECT_ADVERTISE", ""),
                # Its own secret, or one derived from SECRET_KEY (every process has the same).
                "direct_secret": env_secret("CODEXGW_LAYER_DIRECT_SECRET") or f"django:{SECRET_KEY}",
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- REST framework and OpenAPI --------------------------------------------------------------
REST_FRAMEWORK = {
    # Every API route authenticates with its own scheme (internal secret, shared secret, bearer
    # tokens); none uses Django sessions, so no API request touches the database to authenticate.
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "codexgw.api_errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "codexgw",
    "DESCRIPTION": "Gateway that lets coding agents run their tools on remote Codex executors.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

# --- Celery ----------------------------------------------------------------------------------
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
# Without a broker the tasks run in the calling process; the ASGI app then drives the beat
# schedule on an in-process timer (codexgw/periodic.py).
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL
CELERY_IMPORTS = ("appgateway.credential_tasks",)  # autodiscovery only finds <app>.tasks
CELERY_BEAT_SCHEDULE = {
    "prune-revoked-set": {
        "task": "executors.tasks.prune_revoked_set",
        "schedule": CXG_REVOKED_PRUNE_INTERVAL,
    },
    "checkpoint-codex-homes": {
        "task": "appgateway.tasks.checkpoint_codex_homes",
        "schedule": CXG_CHECKPOINT_INTERVAL,
    },
    "refresh-model-tokens": {
        "task": "appgateway.credential_tasks.refresh_model_tokens",
        "schedule": CXG_MODEL_TOKEN_REFRESH_INTERVAL,
    },
}

# --- logging ---------------------------------------------------------------------------------
LOG_LEVEL = env_choice("CXG_LOG_LEVEL", "info", {"debug", "info", "warn", "warning", "error"})
LOG_FORMAT = env_choice("CODEXGW_LOG_FORMAT", "json", {"json", "text"})
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "codexgw.logging.JsonFormatter"},
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    # Adds the connection's exe_id / workspace_id / connection_id to every record (codexgw/logcontext.py).
    "filters": {"context": {"()": "codexgw.logcontext.ContextFilter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]}},
    "root": {"handlers": ["stderr"], "level": {"warn": "WARNING"}.get(LOG_LEVEL, LOG_LEVEL.upper())},
    "loggers": {
        # The servers log each request or WebSocket with its full path; keep them at warning
        # (uvicorn: manage.py serve; daphne and django.server: runserver).
        "uvicorn": {"level": "WARNING"},
        "django.server": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        # One line per periodic task run is noise; failures still log at error.
        "celery.app.trace": {"level": "WARNING"},
        # httpx logs every request at info, URLs included.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}

os.makedirs(DATA_DIR, exist_ok=True)
