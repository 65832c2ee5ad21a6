"""JSON log lines carry the connection's exe_id / workspace_id / connection_id (codexgw/logcontext.py),
per asyncio task, so concurrent connections never see each other's ids."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from codexgw import logcontext
from codexgw.logging import JsonFormatter


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """A handler configured like settings.LOGGING's (JSON formatter, context filter) on a test logger."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(logcontext.ContextFilter())
    logger = logging.getLogger("tests.logcontext")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


log = logging.getLogger("tests.logcontext")


async def test_each_task_logs_its_own_ids(json_lines):
    started = asyncio.Event()

    async def connection(exe_id: str, connection_id: str) -> None:
        logcontext.bind(exe_id=exe_id)
        await started.wait()  # both connections are bound before either logs
        logcontext.bind(connection_id=connection_id)
        await asyncio.sleep(0)
        log.info("frame from %s", exe_id)
        await asyncio.create_task(child(exe_id))  # a task started by the connection inherits its ids
        await sync_to_async(log.info, thread_sensitive=False)("off the loop for %s", exe_id)

    async def child(exe_id: str) -> None:
        log.info("child of %s", exe_id)

    tasks = [asyncio.create_task(connection("exe-a", "conn-a")), asyncio.create_task(connection("exe-b", "conn-b"))]
    await asyncio.sleep(0)
    started.set()
    await asyncio.gather(*tasks)
    log.info("outside any connection")

    lines = records(json_lines)
    assert len(lines) == 7
    for line in lines[:-1]:
        suffix = str(line["msg"])[-1]
        assert line["exe_id"] == f"exe-{suffix}", line
        assert line["connection_id"] == f"conn-{suffix}", line
    assert "exe_id" not in lines[-1]
    assert "connection_id" not in lines[-1]


async def test_explicit_extra_wins_and_workspace_is_carried(json_lines):
    async def tui() -> None:
        logcontext.bind(workspace_id="ws-1", connection_id="conn-tui")
        log.info("attached")
        log.info("relayed", extra={"workspace_id": "ws-other"})

    await asyncio.create_task(tui())
    attached, relayed = records(json_lines)
    assert attached["workspace_id"] == "ws-1"
    assert attached["connection_id"] == "conn-tui"
    assert relayed["workspace_id"] == "ws-other"
    assert relayed["connection_id"] == "conn-tui"


def test_bind_refuses_unknown_fields():
    with pytest.raises(ValueError, match="unknown log context fields"):
        logcontext.bind(token="secret")


def test_settings_attach_the_filter_to_the_log_handler():
    from django.conf import settings

    config: dict[str, Any] = settings.LOGGING
    assert config["handlers"]["stderr"]["filters"] == ["context"]
    assert config["filters"]["context"]["()"] == "codexgw.logcontext.ContextFilter"
