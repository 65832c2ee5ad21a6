"""Messages between gateway processes over the channel layer.

Some state can only be acted on by the process that holds it (a bridge WebSocket, a
subprocess). Each process listens on one channel of its own (``process_channel()``, named in
leases and session records). Two kinds of traffic arrive there:

- one-way messages by ``type`` (``on_message``): handled in arrival order on the reader task, so
  handlers must return quickly (start a task for long work);
- requests (``register`` + ``call``): each served in its own task, the answer going back to a
  fresh reply channel the caller waits on.

Handlers are registered by the apps above in their ``AppConfig.ready()``. This lives in
``bridge/`` with the other pieces of transport between gateway processes (``layer_frames``: frame
pipes and backpressure over the channel layer; ``protocol``: close codes): the bridge is the
lowest layer that moves messages, and every user (``sdk``, ``appgateway``) stands above it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from channels.layers import get_channel_layer

from bridge.layer_frames import send_with_backpressure

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MessageHandler = Callable[[dict[str, Any]], Awaitable[None]]
REQUEST = "process_rpc.request"

_handlers: dict[str, Handler] = {}
_message_handlers: dict[str, MessageHandler] = {}
# Per event loop (tests run several loops in one process): the channel and its listener task.
_listeners: dict[asyncio.AbstractEventLoop, tuple[str, asyncio.Task[None]]] = {}


class PeerUnavailable(Exception):
    """The other process did not answer (gone, or too slow)."""


def register(name: str, handler: Handler) -> None:
    """Serve requests named ``name`` (see ``call``)."""
    _handlers[name] = handler


def on_message(message_type: str, handler: MessageHandler) -> None:
    """Handle one-way messages of ``message_type`` arriving on this process's channel."""
    _message_handlers[message_type] = handler


async def process_channel() -> str:
    """This process's request channel, listening from the first call on."""
    loop = asyncio.get_running_loop()
    current = _listeners.get(loop)
    if current is None or current[1].done():
        layer = get_channel_layer()
        assert layer is not None
        channel = await layer.new_channel()
        current = _listeners.get(loop)  # another caller may have won while we awaited
        if current is None or current[1].done():
            current = (channel, asyncio.create_task(_listen(channel), name="process rpc listener"))
            _listeners[loop] = current
    return current[0]


async def _listen(channel: str) -> None:
    layer = get_channel_layer()
    assert layer is not None
    while True:
        try:
            message = await layer.receive(channel)
        except Exception:
            logger.exception("process channel receive failed; retrying")
            await asyncio.sleep(1.0)
            continue
        kind = message.get("type")
        if kind == REQUEST:
            asyncio.create_task(_serve(message))  # noqa: RUF006 - each request answers on its own; errors are logged
            continue
        handler = _message_handlers.get(str(kind))
        if handler is None:
            logger.warning("unhandled process-channel message", extra={"type": kind})
            continue
        try:
            await handler(message)
        except Exception:
            logger.exception("process-channel message failed", extra={"type": kind})


async def _serve(message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    assert layer is not None
    handler = _handlers.get(str(message.get("handler")))
    try:
        if handler is None:
            reply: dict[str, Any] = {"ok": False, "error": f"no handler {message.get('handler')!r}"}
        else:
            reply = {"ok": True, "result": await handler(message.get("payload") or {})}
    except Exception as exc:
        logger.exception("process rpc handler failed", extra={"handler": message.get("handler")})
        reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    await send_with_backpressure(layer, str(message["reply_to"]), {"type": "process_rpc.reply", **reply})


async def call(channel: str, handler: str, payload: dict[str, Any], patience: float = 30.0) -> dict[str, Any]:
    """Ask the process listening on ``channel``; raises ``PeerUnavailable`` when it does not answer
    within ``patience`` seconds."""
    if channel == await process_channel():
        local = _handlers[handler]
        return await local(payload)
    layer = get_channel_layer()
    assert layer is not None
    reply_to = await layer.new_channel()
    await send_with_backpressure(
        layer, channel, {"type": REQUEST, "handler": handler, "payload": payload, "reply_to": reply_to}
    )
    try:
        reply = await asyncio.wait_for(layer.receive(reply_to), patience)
    except TimeoutError:
        raise PeerUnavailable(f"no answer from {channel} within {patience}s") from None
    if not reply.get("ok"):
        raise PeerUnavailable(str(reply.get("error")))
    result: dict[str, Any] = reply["result"]
    return result
