"""The Redis path of the channel layer's sends (codexgw/channel_layer.py): the send script, and
one event loop's pipe that runs it at once or pipelines what queued up behind a call in flight."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio
import redis.exceptions

# KEYS: inbox, the channel's credit (a hash: n messages, b bytes). ARGV: payload, capacity in
# messages, in bytes, expiry (ms). A message alone in its channel goes in whatever its size.
SEND_SCRIPT = """
local size = string.len(ARGV[1])
local n = redis.call('HINCRBY', KEYS[2], 'n', 1)
local b = redis.call('HINCRBY', KEYS[2], 'b', size)
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if n > 1 and (n > tonumber(ARGV[2]) or b > tonumber(ARGV[3])) then
  redis.call('HINCRBY', KEYS[2], 'n', -1)
  redis.call('HINCRBY', KEYS[2], 'b', -size)
  return 0
end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""


def settle(future: asyncio.Future[Any] | None, result: Any) -> None:
    """Hand a waiting sender its result from a batch: the value, or the exception raised for it."""
    if future is None or future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


SendCall = tuple[list[Any], "asyncio.Future[Any] | None"]


class SendPipe:
    """One event loop's sends: the send script runs at once when nothing else is on the wire,
    else in one pipeline with everything that queued up meanwhile (in order either way)."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self._script = client.register_script(SEND_SCRIPT)  # reloads itself after NOSCRIPT
        self._busy = False
        self._queued: list[SendCall] = []
        self.flusher: asyncio.Task[None] | None = None

    async def call(self, send_args: list[Any]) -> Any:
        if self._busy:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._queued.append((send_args, future))
            return await future
        self._busy = True
        try:
            return (await self._run([(send_args, None)]))[0]
        finally:
            if self._queued:
                self.flusher = asyncio.create_task(self._flush(), name="channel layer send")
            else:
                self._busy = False

    async def _flush(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    results = await self._run(batch)
                except Exception as error:
                    results = [error] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    settle(future, result)
        finally:
            self._busy = False
            for _, future in self._queued:  # only if cancelled (the loop is closing)
                if future is not None and not future.done():
                    future.cancel()
            self._queued.clear()

    async def _run(self, batch: list[SendCall]) -> list[Any]:
        if len(batch) == 1:
            keys, args = batch[0][0][:2], batch[0][0][2:]
            return [await self._script(keys, args)]
        # Not the script object in the pipeline: redis-py would ask SCRIPT EXISTS before each one.
        pipe = self.client.pipeline(transaction=False)
        for send_args, _ in batch:
            pipe.evalsha(self._script.sha, 2, *send_args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        again = [i for i, result in enumerate(results) if isinstance(result, redis.exceptions.NoScriptError)]
        if again:
            # Redis restarted or its scripts were flushed: load again and send what was refused.
            await self.client.script_load(SEND_SCRIPT)
            retried = await self._run([batch[i] for i in again])
            for i, result in zip(again, retried, strict=True):
                results[i] = result
        return results
