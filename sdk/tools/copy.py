"""``copy_path``: copy a file or a directory from one environment to another (app-gateway §5.3).

Transports:

* ``http`` — the gateway's byte relay: a ticket, then ``curl`` on both executors, the source
  uploading and the destination downloading. Used first under ``auto`` when a relay client is
  configured; ``auto`` falls back to ``ws`` when either side exits 127 (no curl, or no bash).
* ``ws`` — the bytes travel over the bridges: block reads (``fs/readBlock``) on the source,
  block writes (``fs/writeBlock``) to a partial file on the destination. Pulling blocks keeps
  memory bounded (one block in flight each way) and makes every step retryable by offset; a
  ``cat`` pump would have to buffer all output a slower destination has not taken, since pushed
  output cannot be paused, and exec-server retains only ~1 MiB of it. The end of the stream is
  the source's end of file, so no end-of-stdin signal (which exec-server lacks) is needed.

Directories (``recursive``) travel as a tar archive. The destination is written under a
``.partial-<id>`` name and moved into place only when complete; failures remove it.
"""

# ruff: noqa: ASYNC109 - helpers run within the copy's one deadline

from __future__ import annotations

import asyncio
import contextlib
import json
import posixpath
import shlex
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field

from bridge.client import BridgeClient, BridgeError
from sdk.tools.arguments import AbsolutePath, Arguments, Text, TimeoutMs, environment_field, takes
from sdk.tools.base import JSON, Environment, ToolContext, ToolError, ToolResult, environment, process_env, temp_dir
from sdk.tools.files import BLOCK, RemoteFile, lookup, stat
from sdk.tools.running import Completed, run_process

RELAY_TTL_SLACK = 30  # seconds a ticket outlives the copy's own deadline
CLEANUP_TIMEOUT = 5.0
COMMAND_NOT_FOUND = 127
STDERR_SHOWN = 2000
TICKET_ENV = "CXG_RELAY_TICKET"  # the ticket reaches curl by environment, not argv (ps shows argv)


@dataclass
class Plan:
    source: Environment
    destination: Environment
    source_path: str
    destination_path: str
    directory: bool
    deadline: float

    def __post_init__(self) -> None:
        self.partial = f"{self.destination_path}.partial-{uuid.uuid4().hex[:12]}"

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


def _stderr(completed: Completed) -> str:
    return completed.stderr.text().strip()[-STDERR_SHOWN:]


def _failed(what: str, completed: Completed) -> ToolError:
    detail = completed.failure or f"exit={completed.exit_code}"
    return ToolError(f"{what} failed: {detail}; stderr={_stderr(completed)!r}")


async def _sh(client: BridgeClient, script: str, timeout: float, env: dict[str, str] | None = None) -> Completed:
    return await run_process(client, ["sh", "-c", script], cwd="/", env=process_env(client, env), timeout=timeout)


async def _quietly(work: Awaitable[object]) -> None:
    """Cleanup: bounded, and finished (shielded) even if the copy is cancelled meanwhile."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.shield(work), CLEANUP_TIMEOUT)


async def _remove_partial(plan: Plan, *extra: str) -> None:
    paths = " ".join(shlex.quote(path) for path in (plan.partial, *extra))
    await _quietly(_sh(plan.destination.client, f"rm -rf -- {paths}", CLEANUP_TIMEOUT))


async def _move_into_place(plan: Plan) -> None:
    partial, final = shlex.quote(plan.partial), shlex.quote(plan.destination_path)
    if plan.directory:
        # Never merge into (or nest inside) an existing directory.
        script = f'if [ -e {final} ]; then echo "{final} already exists" >&2; exit 1; fi; mv -- {partial} {final}'
    else:
        script = f"mv -f -- {partial} {final}"
    completed = await _sh(plan.destination.client, script, plan.remaining())
    if not completed.ok:
        raise _failed("moving the copy into place", completed)


# --- ws ------------------------------------------------------------------------------------------


async def pump(source: BridgeClient, source_path: str, destination: BridgeClient, destination_path: str) -> int:
    """Copy a file block by block, reading the next block while the last one is written."""
    async with (
        RemoteFile(source, source_path, "read") as reader,
        RemoteFile(destination, destination_path, "replace") as writer,
    ):
        offset = 0
        writing: asyncio.Future[None] | None = None
        try:
            while True:
                chunk, eof = await reader.read(offset, BLOCK)
                if writing is not None:
                    await writing
                    writing = None
                if chunk:
                    writing = asyncio.ensure_future(writer.write(offset, chunk))
                    offset += len(chunk)
                if eof or not chunk:
                    break
            if writing is not None:
                await writing
        finally:
            if writing is not None and not writing.done():
                writing.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writing
    return offset


async def ws_copy(plan: Plan) -> int:
    if not plan.directory:
        try:
            size = await pump(plan.source.client, plan.source_path, plan.destination.client, plan.partial)
            await _move_into_place(plan)
        except BaseException:
            await _remove_partial(plan)
            raise
        return size
    archive = posixpath.join(temp_dir(plan.source.client), f"codexgw-copy-{uuid.uuid4().hex}.tar")
    received = f"{plan.partial}.tar"
    try:
        packed = await _sh(
            plan.source.client, f"tar -C {shlex.quote(plan.source_path)} -cf {shlex.quote(archive)} .", plan.remaining()
        )
        if not packed.ok:
            raise _failed("tar on the source", packed)
        size = await pump(plan.source.client, archive, plan.destination.client, received)
        partial, tarball = shlex.quote(plan.partial), shlex.quote(received)
        unpacked = await _sh(
            plan.destination.client,
            f"mkdir -- {partial} && tar -C {partial} -xf {tarball} && rm -f -- {tarball}",
            plan.remaining(),
        )
        if not unpacked.ok:
            raise _failed("tar on the destination", unpacked)
        await _move_into_place(plan)
    except BaseException:
        await _remove_partial(plan, received)
        raise
    finally:
        await _quietly(_sh(plan.source.client, f"rm -f -- {shlex.quote(archive)}", CLEANUP_TIMEOUT))
    return size


# --- http relay ------------------------------------------------------------------------------------


def _relay_scripts(plan: Plan, upload_url: str, download_url: str) -> tuple[list[str], list[str]]:
    auth = f'-H "Authorization: Bearer ${TICKET_ENV}"'
    source, partial = shlex.quote(plan.source_path), shlex.quote(plan.partial)
    if not plan.directory:
        upload = f"curl -fsS --upload-file {source} {auth} {shlex.quote(upload_url)}"
        download = f"curl -fsS {auth} -o {partial} {shlex.quote(download_url)}"
        return ["sh", "-c", upload], ["sh", "-c", download]
    # pipefail (bash): a failing tar must fail the side, not send a short archive that looks whole.
    upload = f"set -o pipefail; tar -C {source} -cf - . | curl -fsS --upload-file - {auth} {shlex.quote(upload_url)}"
    download = (
        f"set -o pipefail; mkdir -- {partial} && curl -fsS {auth} {shlex.quote(download_url)} | tar -C {partial} -xf -"
    )
    return ["bash", "-c", upload], ["bash", "-c", download]


async def relay_copy(ctx: ToolContext, plan: Plan, *, may_fall_back: bool) -> bool:
    """Copy through the relay; False when a side lacks curl/bash and the caller may fall back."""
    assert ctx.relay is not None
    try:
        ticket = await ctx.relay.create(
            ctx.workspace_id,
            plan.source.exe_id,
            plan.destination.exe_id,
            ttl_seconds=int(plan.remaining()) + RELAY_TTL_SLACK,
        )
    except Exception as error:
        raise ToolError(f"relay ticket: {error}") from None
    upload, download = _relay_scripts(plan, ticket.upload_url, ticket.download_url)
    secret = {TICKET_ENV: ticket.ticket}

    def side(client: BridgeClient, argv: list[str]) -> asyncio.Task[Completed]:
        env = process_env(client, secret)
        return asyncio.ensure_future(run_process(client, argv, cwd="/", env=env, timeout=plan.remaining()))

    sides = {"source": side(plan.source.client, upload), "destination": side(plan.destination.client, download)}
    try:
        pending = set(sides.values())
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(not task.result().ok for task in done):
                break  # the other side would wait for its peer until the ticket expires
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)  # each terminates its process when cancelled
        results = {name: task.result() for name, task in sides.items() if not task.cancelled()}
        if all(r.exit_code != COMMAND_NOT_FOUND for r in results.values()):
            for name, completed in results.items():
                if not completed.ok:
                    raise _failed(f"{name} curl", completed)
            await _move_into_place(plan)
            return True
    except BaseException:
        for task in sides.values():
            task.cancel()
        await _quietly(asyncio.wait(sides.values()))
        await _remove_partial(plan)
        raise
    await _remove_partial(plan)
    if may_fall_back:
        return False
    raise ToolError("the HTTP relay needs curl (and bash for directories) on both environments")


# --- the tool ------------------------------------------------------------------------------------


class CopyPathArguments(Arguments):
    source_environment_id: Annotated[Text, environment_field("Source environment")]
    source_path: Annotated[AbsolutePath, Field(description="Absolute path on the source.")]
    destination_environment_id: Annotated[Text, environment_field("Destination environment")]
    destination_path: Annotated[
        AbsolutePath,
        Field(description="Absolute path of the copy; an existing file is replaced, a directory is not."),
    ]
    recursive: Annotated[bool, Field(description="Required to copy a directory.")] = False
    timeout_ms: Annotated[TimeoutMs, Field(description="Default 600000.")] = 600_000
    transport: Annotated[Literal["auto", "http", "ws"], Field(description="Default auto.")] = "auto"


@takes(CopyPathArguments)
async def copy_path(ctx: ToolContext, args: CopyPathArguments) -> ToolResult:
    source_path, destination_path, timeout_ms = args.source_path, args.destination_path, args.timeout_ms
    if args.transport == "http" and ctx.relay is None:
        raise ToolError("the HTTP relay is not configured on this gateway (use transport auto or ws)")
    source = await environment(ctx, args.source_environment_id)
    destination = await environment(ctx, args.destination_environment_id)
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_ms / 1000):
            meta = await stat(source.client, source_path)
            directory = bool(meta.get("isDirectory"))
            if directory and not args.recursive:
                raise ToolError(f"{source_path} is a directory (set recursive to copy it)")
            await _check_destination(destination.client, destination_path, directory)
            plan = Plan(source, destination, source_path, destination_path, directory, started + timeout_ms / 1000)
            relayed = args.transport != "ws" and ctx.relay is not None
            used = "http" if relayed and await relay_copy(ctx, plan, may_fall_back=args.transport == "auto") else "ws"
            result: JSON = {"transport": used}
            if used == "ws":
                result["bytes"] = await ws_copy(plan)
            elif not directory:
                result["bytes"] = int(meta.get("size") or 0)
    except BridgeError as error:  # before TimeoutError: a call's own timeout is one of these
        raise ToolError(f"copy_path: {error}") from None
    except TimeoutError:
        raise ToolError(f"copy_path timed out after {timeout_ms} ms") from None
    result["duration_ms"] = int((time.monotonic() - started) * 1000)
    return ToolResult.ok(json.dumps(result), result)


async def _check_destination(client: BridgeClient, path: str, directory: bool) -> None:
    """Fail early, with the caller's path in the message, rather than on the partial's."""
    parent = posixpath.dirname(path)
    if not (await stat(client, parent)).get("isDirectory"):
        raise ToolError(f"{parent} is not a directory")
    existing = await lookup(client, path)
    # A file may be replaced; a directory is never merged into or nested inside.
    if existing is not None and (directory or existing.get("isDirectory")):
        raise ToolError(f"{path} already exists")
