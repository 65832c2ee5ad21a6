"""Test settings: the project's settings on the machine's real PostgreSQL and Redis.

Defaults point at 127.0.0.1:5432 (trust auth, user postgres) and Redis 127.0.0.1:6379 db 15;
override with DATABASE_URL / REDIS_URL. Secrets are fixed test values so tests can sign with them.
"""

import os

_TEST_ENV = {
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/codexgw",
    "REDIS_URL": "redis://127.0.0.1:6379/15",
    "CODEXGW_LOCAL_SECRETS": "false",
    "DJANGO_SECRET_KEY": "test-django-secret-key-not-for-production",
    "CODEXGW_TOKEN_ENCRYPTION_KEYS": "test-encryption-key",
    "CXG_CAPTOKEN_HMAC_SECRET": "test-captoken-secret",
    "CXG_INTERNAL_SHARED_SECRET": "test-shared-secret",
    "CXG_AGENTSERVER_INTERNAL_SECRET": "test-agentserver-secret",
    # The suite's older tests are agentserver-mode tests (a fake agentserver per test); the
    # built-in control plane's tests switch to "builtin" themselves.
    "CODEXGW_IDENTITY_BACKEND": "agentserver",
    "CODEXGW_REDIS_PREFIX": f"cxgtest{os.getpid()}:",
    "CXG_BCRYPT_ROUNDS": "4",
    "CODEXGW_DB_CONN_MAX_AGE": "0",
    "CODEXGW_LOG_FORMAT": "text",
}
for _name, _value in _TEST_ENV.items():
    os.environ.setdefault(_name, _value)

from codexgw.settings import *  # noqa: E402, F403

# Parallel test runs on one machine (several developers' sessions) each get their own test
# database: CODEXGW_TEST_RUN=<name> pytest ...
if os.environ.get("CODEXGW_TEST_RUN"):
    DATABASES["default"]["TEST"] = {"NAME": f"test_codexgw_{os.environ['CODEXGW_TEST_RUN']}"}  # noqa: F405
