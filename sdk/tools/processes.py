"""Long-running processes: ``exec_command`` starts one with stdin open and returns a session;
``write_stdin``, ``read_output`` and ``terminate`` act on the session (``ctx.sessions``)."""

from __future__ import annotations

import base64
import binascii
import json

from sdk.tools.base import (
    JSON,
    ToolContext,
    ToolError,
    ToolResult,
    arg_argv,
    arg_bool,
    arg_env,
    arg_int,
    arg_path,
    arg_str,
    environment,
    file_uri,
    home_dir,
    process_env,
    tool_errors,
)
from sdk.tools.running import start_process
from sdk.tools.sessions import ProcessSession

DEFAULT_YIELD_MS = 1000
MAX_YIELD_MS = 300_000
MAX_STDIN_BYTES = 4 * 1024 * 1024


@tool_errors
async def exec_command(ctx: ToolContext, arguments: JSON) -> ToolResult:
    argv = arg_argv(arguments)
    extra_env = arg_env(arguments)
    tty = arg_bool(arguments, "tty")
    env = await environment(ctx, arguments)
    cwd = arg_path(arguments, "cwd") if arguments.get("cwd") else home_dir(env.client)
    session = ProcessSession(workspace_id=ctx.workspace_id, environment=env.name, exe_id=env.exe_id, pool=ctx.pool)
    session.attach(env.client)  # before the start, so no event is missed
    params: JSON = {
        "processId": session.process_id,
        "argv": argv,
        "cwd": file_uri(cwd),
        "env": process_env(env.client, extra_env),
        "tty": tty,
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


async def _session(ctx: ToolContext, arguments: JSON) -> ProcessSession:
    session_id = arg_str(arguments, "session_id")
    session = await ctx.sessions.get(session_id)
    # Another workspace's session is reported like a missing one: ids are not to be probed.
    if session is None or session.workspace_id != ctx.workspace_id:
        raise ToolError(f"no such session: {session_id}")
    if arguments.get("environment_id") is not None:
        env = arg_str(arguments, "environment_id")
        if await ctx.resolver.resolve(env) != session.exe_id:
            raise ToolError(f"session {session_id} does not belong to environment {env!r}")
    return session


def _stdin_bytes(arguments: JSON) -> bytes:
    if ("chars" in arguments) == ("data_b64" in arguments):
        raise ToolError("invalid arguments: give exactly one of chars and data_b64")
    if "chars" in arguments:
        data = arg_str(arguments, "chars", "").encode()
    else:
        try:
            data = base64.b64decode(arg_str(arguments, "data_b64", ""), validate=True)
        except binascii.Error:
            raise ToolError("invalid arguments: data_b64 is not valid base64") from None
    if len(data) > MAX_STDIN_BYTES:
        raise ToolError(f"invalid arguments: at most {MAX_STDIN_BYTES} bytes per write")
    return data


@tool_errors
async def write_stdin(ctx: ToolContext, arguments: JSON) -> ToolResult:
    data = _stdin_bytes(arguments)
    session = await _session(ctx, arguments)
    if session.exit_code is not None:
        # exec-server accepts (and drops) writes to a process that has exited.
        return ToolResult.error(f"the process has exited (exit code {session.exit_code}); stdin is closed")
    status = await session.write(data)
    if status == "accepted":
        return ToolResult.ok("ok", {"ok": True, "bytes": len(data)})
    if status == "stdinClosed":
        return ToolResult.error("stdin is closed: the process has exited")
    return ToolResult.error(f"the process of session {session.session_id} is gone ({status})")


@tool_errors
async def read_output(ctx: ToolContext, arguments: JSON) -> ToolResult:
    session = await _session(ctx, arguments)
    since = arg_int(arguments, "since", session.read_cursor)
    yield_ms = arg_int(arguments, "yield_time_ms", DEFAULT_YIELD_MS, maximum=MAX_YIELD_MS)
    if session.alive:
        await session.client()  # re-attach after a bridge close, catching up on missed output
        await session.wait_for_output(since, yield_ms / 1000)
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


@tool_errors
async def terminate(ctx: ToolContext, arguments: JSON) -> ToolResult:
    session = await _session(ctx, arguments)
    try:
        running = await session.terminate()
    finally:
        await ctx.sessions.forget(session.session_id)
    return ToolResult.ok("terminated", {"running": running})
