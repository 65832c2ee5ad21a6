"""Django settings for env-mcp (``manage.py envmcp``), the MCP server codex runs per thread.

env-mcp runs inside the app-server's allow-listed environment: it must not hold the gateway's
secrets nor reach its database or Redis, and it needs Django only so that the shared tool code
(``sdk.tools``, whose name resolver module imports the executors models) can be imported. So
these settings read no secret and configure no database, cache or channel layer: any ORM query
fails loudly (Django's dummy backend) instead of quietly opening a connection.
"""

from __future__ import annotations

import os
import secrets

# Nothing in env-mcp signs anything; Django only insists on a non-empty value when it is read.
SECRET_KEY = secrets.token_urlsafe(32)
# executors: its models, imported by the tool code; appgateway: the envmcp command itself;
# workspaces: its models, imported by appgateway's ready() (the identity interface).
INSTALLED_APPS = ["executors", "workspaces", "appgateway"]
DATABASES: dict[str, dict[str, str]] = {}
# Serves none of the gateway's roles: the apps add no routes and no drain steps here.
CODEXGW_ROLES: set[str] = set()
USE_TZ = True
_LEVEL = os.environ.get("CXG_LOG_LEVEL", "info").upper()
# stdout carries the MCP protocol: every log line goes to stderr, whoever logs it.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "text"}},
    "root": {"handlers": ["stderr"], "level": {"WARN": "WARNING"}.get(_LEVEL, _LEVEL)},
    "loggers": {"httpx": {"level": "WARNING"}, "httpcore": {"level": "WARNING"}},
}
