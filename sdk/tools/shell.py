"""``shell``: run a command to completion and return its output and exit code."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from sdk.tools.arguments import INTEGRAL, Arguments, Argv, CwdField, EnvironmentId, EnvVars, TimeoutMs, takes
from sdk.tools.base import JSON, ToolContext, ToolResult, environment, home_dir, process_env
from sdk.tools.running import DEFAULT_MAX_OUTPUT, run_process


class ShellArguments(Arguments):
    environment_id: EnvironmentId
    command: Argv
    cwd: CwdField = None
    env: EnvVars = {}
    timeout_ms: Annotated[TimeoutMs, Field(description="Default 60000.")] = 60_000
    max_output_bytes: Annotated[
        int,
        Field(ge=1024, description="Per stream; the middle of longer output is omitted. Default 1048576."),
        INTEGRAL,
    ] = DEFAULT_MAX_OUTPUT


@takes(ShellArguments)
async def shell(ctx: ToolContext, args: ShellArguments) -> ToolResult:
    env = await environment(ctx, args.environment_id)
    completed = await run_process(
        env.client,
        args.command,
        cwd=args.cwd or home_dir(env.client),
        env=process_env(env.client, args.env),
        timeout=args.timeout_ms / 1000,
        max_output=args.max_output_bytes,
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
