"""``shell``: run a command to completion and return its output and exit code."""

from __future__ import annotations

from sdk.tools.base import (
    JSON,
    ToolContext,
    ToolResult,
    arg_argv,
    arg_env,
    arg_int,
    arg_path,
    environment,
    home_dir,
    process_env,
    tool_errors,
)
from sdk.tools.running import DEFAULT_MAX_OUTPUT, run_process

DEFAULT_TIMEOUT_MS = 60_000
MAX_TIMEOUT_MS = 24 * 3600 * 1000


@tool_errors
async def shell(ctx: ToolContext, arguments: JSON) -> ToolResult:
    argv = arg_argv(arguments)
    timeout_ms = arg_int(arguments, "timeout_ms", DEFAULT_TIMEOUT_MS, minimum=1, maximum=MAX_TIMEOUT_MS)
    max_output = arg_int(arguments, "max_output_bytes", DEFAULT_MAX_OUTPUT, minimum=1024)
    extra_env = arg_env(arguments)
    env = await environment(ctx, arguments)
    cwd = arg_path(arguments, "cwd") if arguments.get("cwd") else home_dir(env.client)
    completed = await run_process(
        env.client,
        argv,
        cwd=cwd,
        env=process_env(env.client, extra_env),
        timeout=timeout_ms / 1000,
        max_output=max_output,
    )
    stdout, stderr = completed.stdout.text(), completed.stderr.text()
    text = stdout
    if stderr:
        text += f"\n--- stderr ---\n{stderr}" if text else stderr
    notes = [f"[exec failure: {completed.failure}]"] if completed.failure else []
    if completed.exit_code is not None:
        notes.append(f"[exit_code={completed.exit_code}]")
    for note in notes:
        text += f"\n{note}" if text else note
    structured: JSON = {"stdout": stdout, "stderr": stderr, "exit_code": completed.exit_code}
    if completed.failure:
        structured["failure"] = completed.failure
    # A non-zero exit is a normal answer; only a run that did not complete is an error.
    return ToolResult(text, completed.failure is not None, structured)
