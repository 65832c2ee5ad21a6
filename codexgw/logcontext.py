"""Per-connection log context: ``exe_id``, ``workspace_id`` and ``connection_id`` on every record.

Channels runs each WebSocket consumer in its own asyncio task, and a task runs in its own copy
of the context, so what a consumer binds stays with that connection: its handlers, the tasks it
starts (they copy the context when created) and the threads ``sync_to_async`` runs for it.
``ContextFilter`` (on the log handler, see ``LOGGING`` in settings) copies the bound fields onto
each record; a field passed explicitly with ``extra=`` wins.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

FIELDS = ("exe_id", "workspace_id", "connection_id")

_context: ContextVar[dict[str, str]] = ContextVar("codexgw_log_context", default={})  # noqa: B039 - never mutated


def bind(**fields: str) -> None:
    """Add fields (only the names in ``FIELDS``) to the current context's log records."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown log context fields: {sorted(unknown)}")
    # A new dict each time: a context copied earlier (a task started before) keeps its own.
    _context.set({**_context.get(), **{name: value for name, value in fields.items() if value}})


def current() -> dict[str, str]:
    return dict(_context.get())


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True
