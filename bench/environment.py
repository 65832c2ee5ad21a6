"""The bench's own database, Redis prefix and Django settings, created for one run and removed
after it (a crashed run leaves at most a database named ``codexgw_bench_<pid>``)."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator
from dataclasses import dataclass

ADMIN_URL_DEFAULT = "postgres://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class BenchEnv:
    database: str
    redis_prefix: str
    fd_limit: int


def raise_fd_limit() -> int:
    """Soft ``nofile`` up to the hard limit (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return int(soft)


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(os.environ.get("BENCH_ADMIN_DATABASE_URL", ADMIN_URL_DEFAULT), autocommit=True) as conn:
        conn.execute(sql.encode())  # the database name is ours (codexgw_bench_<pid>), not input


@contextlib.contextmanager
def bench_environment(database: str | None = None) -> Iterator[BenchEnv]:
    """Create and migrate a dedicated PostgreSQL database, pick a unique Redis prefix, set up
    Django on them (the test settings: fixed secrets the bench signs with); drop both at exit."""
    name = database or f"codexgw_bench_{os.getpid()}"
    prefix = f"cxgbench{os.getpid()}:"
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{name}"
    os.environ["CODEXGW_REDIS_PREFIX"] = prefix
    # The exec gateway is what is measured; the app role's routes are not loaded (and a tree
    # where another change is half-way through them still benchmarks).
    os.environ.setdefault("CODEXGW_ROLES", "exec")
    # The production default: tests.settings would reconnect to PostgreSQL for every query.
    os.environ.setdefault("CODEXGW_DB_CONN_MAX_AGE", "60")
    _admin(f'DROP DATABASE IF EXISTS "{name}"')
    _admin(f'CREATE DATABASE "{name}"')
    try:
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        yield BenchEnv(database=name, redis_prefix=prefix, fd_limit=raise_fd_limit())
    finally:
        _cleanup(name, prefix)


def _cleanup(name: str, prefix: str) -> None:
    with contextlib.suppress(Exception):
        from django.db import connections

        connections.close_all()
    with contextlib.suppress(Exception):
        from codexgw import redis as gwredis

        client = gwredis.sync_client()
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
