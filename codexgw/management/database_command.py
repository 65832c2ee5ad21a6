"""The base of the management commands that read the gateway's database."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor


class DatabaseCommand(BaseCommand):
    """Run against a database the gateway never set up (most often the embedded SQLite file of
    another ``CODEXGW_DATA_DIR``), the command stops with an error that says so, not with a
    ``no such table`` traceback. Django only prints a notice there and goes on."""

    requires_migrations_checks = True

    def check_migrations(self) -> None:
        connection = connections[DEFAULT_DB_ALIAS]
        executor = MigrationExecutor(connection)
        if executor.migration_plan(executor.loader.graph.leaf_nodes()):
            raise CommandError(
                f"the database {connection.settings_dict['NAME']} is not set up: run this command with the "
                "gateway's CODEXGW_DATA_DIR (and database settings), or set it up with `manage.py migrate`"
            )
