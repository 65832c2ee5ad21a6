"""The app-server child's output in the gateway's log (``appgateway.app_server_process._drain``):
every line at info, but codex's false bubblewrap ERROR (held back from the TUI as well) at debug."""

from __future__ import annotations

import asyncio
import logging

import pytest

from appgateway.app_server_process import _drain
from appgateway.rpc_filter import FALSE_SANDBOX_WARNING


async def test_the_false_bubblewrap_error_is_logged_at_debug_and_the_rest_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = asyncio.StreamReader()
    stream.feed_data(b"listening on ws://127.0.0.1:4567\n")
    stream.feed_data(f"\x1b[31mERROR\x1b[0m codex_app_server: {FALSE_SANDBOX_WARNING}. Please install it.\n".encode())
    stream.feed_data(b"ERROR codex_core: something real\n")
    stream.feed_eof()
    url: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    with caplog.at_level(logging.DEBUG, logger="appgateway.codex"):
        await _drain(stream, "ws-1", url)
    assert url.result() == "ws://127.0.0.1:4567"
    levels = [(record.levelno, record.getMessage()) for record in caplog.records if record.name == "appgateway.codex"]
    assert levels == [
        (logging.INFO, "[codex-app-server ws-1] listening on ws://127.0.0.1:4567"),
        (logging.DEBUG, f"[codex-app-server ws-1] ERROR codex_app_server: {FALSE_SANDBOX_WARNING}. Please install it."),
        (logging.INFO, "[codex-app-server ws-1] ERROR codex_core: something real"),
    ]
