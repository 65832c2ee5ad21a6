"""Long-running processes: ``exec_command`` starts one with stdin open and returns a session;
``write_stdin``, ``read_output`` and ``terminate`` act on the session (``ctx.sessions``)."""

from __future__ import annotations

import base64
import json
from typing import Annotated

from pydantic import Field, model_validator

from sdk.tools.arguments import (
    Arguments,
    Argv,
    Base64,
    Count,
    CwdField,
    EnvironmentId,
    EnvVars,
    SessionEnvironment,
    SessionId,
    at_most,
    takes,
)
from sdk.tools.base import ToolContext, ToolError, ToolResult, environment, file_uri, home_dir, process_env
from sdk.tools.running import start_process
from sdk.tools.sessions import ProcessSession

MAX_STDIN_BYTES = 4 * 1024 * 1024


class ExecCommandArguments(Arguments):
    environment_id: EnvironmentId
    command: Argv
    cwd: CwdField = None
    env: EnvVars = {}
    tty: Annotated[bool, Field(description="Run under a pseudo-terminal. Default false.")] = False


class SessionArguments(Arguments):
    session_id: SessionId
    environment_id: SessionEnvironment = None


class WriteStdinArguments(Arguments):
    session_id: SessionId
    chars: Annotated[str | None, Field(description='Text to write (UTF-8), e.g. "ls\\n".')] = None
    data_b64: Annotated[Base64 | None, Field(description="Bytes to write, base64 (instead of chars).")] = None
    environment_id: SessionEnvironment = None

    @model_validator(mode="after")
    def _one_input(self) -> WriteStdinArguments:
        if (self.chars is None) == (self.data_b64 is None):
            raise ValueError("give exactly one of chars and data_b64")
        if len(self.data) > MAX_STDIN_BYTES:
            raise ValueError(f"at most {MAX_STDIN_BYTES} bytes per write")
        return self

    @property
    def data(self) -> bytes:
        return self.chars.encode() if self.chars is not None else base64.b64decode(self.data_b64 or "")


class ReadOutputArguments(Arguments):
    session_id: SessionId
    since: Annotated[Count | None, Field(description="Return chunks with seq > since.")] = None
    yield_time_ms: Annotated[Count, Field(description="Default 1000."), at_most(300_000)] = 1000
    environment_id: SessionEnvironment = None


@takes(ExecCommandArguments)
async def exec_command(ctx: ToolContext, args: ExecCommandArguments) -> ToolResult:
    env = await environment(ctx, args.environment_id)
    session = ProcessSession(workspace_id=ctx.workspace_id, environment=env.name, exe_id=env.exe_id, pool=ctx.pool)
    session.attach(env.client)  # before the start, so no event is missed
    params = {
        "processId": session.process_id,
        "argv": args.command,
        "cwd": file_uri(args.cwd or home_dir(env.client)),
        "env": process_env(env.client, args.env),
        "tty": args.tty,
        "pipeStdin": True,
        "arg0": None,
    }
    try:
        await start_process(env.client, params)
    except BaseException:
        session.detach()
        raise
    await ctx.sessions.register(session)
    return ToolResult.ok(json.dumps({"session_id": session.session_id}), {"session_id": session.session_id})


async def _session(ctx: ToolContext, session_id: str, environment_id: str | None) -> ProcessSession:
    session = await ctx.sessions.get(session_id)
    # Another workspace's session is reported like a missing one: ids are not to be probed.
    if session is None or session.workspace_id != ctx.workspace_id:
        raise ToolError(f"no such session: {session_id}")
    if environment_id is not None and await ctx.resolver.resolve(environment_id) != session.exe_id:
        raise ToolError(f"session {session_id} does not belong to environment {environment_id!r}")
    return session


@takes(WriteStdinArguments)
async def write_stdin(ctx: ToolContext, args: WriteStdinArguments) -> ToolResult:
    data = args.data
    session = await _session(ctx, args.session_id, args.environment_id)
    if session.exit_code is not None:
        # exec-server accepts (and drops) writes to a process that has exited.
        return ToolResult.error(f"the process has exited (exit code {session.exit_code}); stdin is closed")
    status = await session.write(data)
    if status == "accepted":
        return ToolResult.ok("ok", {"ok": True, "bytes": len(data)})
    if status == "stdinClosed":
        return ToolResult.error("stdin is closed: the process has exited")
    return ToolResult.error(f"the process of session {session.session_id} is gone ({status})")


@takes(ReadOutputArguments)
async def read_output(ctx: ToolContext, args: ReadOutputArguments) -> ToolResult:
    session = await _session(ctx, args.session_id, args.environment_id)
    since = session.read_cursor if args.since is None else args.since
    if session.alive:
        await session.client()  # re-attach after a bridge close, catching up on missed output
        await session.wait_for_output(since, args.yield_time_ms / 1000)
    output = session.output_since(since)
    session.read_cursor = output.next_seq - 1
    text = b"".join(chunk.data for chunk in output.chunks).decode(errors="replace")
    notes = []
    if output.lost_bytes:
        notes.append(f"[{output.lost_bytes} bytes of earlier output were dropped]")
    if output.failure:
        notes.append(f"[{output.failure}]")
    if output.exit_code is not None:
        notes.append(f"[exit_code={output.exit_code}]")
    elif output.alive:
        notes.append("[running]")
    for note in notes:
        text += f"\n{note}" if text else note
    return ToolResult.ok(text, output.to_json())


@takes(SessionArguments)
async def terminate(ctx: ToolContext, args: SessionArguments) -> ToolResult:
    session = await _session(ctx, args.session_id, args.environment_id)
    try:
        running = await session.terminate()
    finally:
        await ctx.sessions.forget(session.session_id)
    return ToolResult.ok("terminated", {"running": running})
