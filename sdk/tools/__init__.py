"""The tool set shared by the SDK REST surface and env-mcp, in registration order.

``tool_specs()`` is MCP ``tools/list`` (``{name, description, inputSchema}``, the schema generated
from the tool's arguments model); ``get_tool(name)`` the implementation,
``async (ToolContext, arguments) -> ToolResult``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sdk.tools.arguments import Arguments, TypedTool
from sdk.tools.base import JSON, Tool
from sdk.tools.copy import copy_path
from sdk.tools.environments import list_environments
from sdk.tools.files import apply_patch, read_file, write_file
from sdk.tools.processes import exec_command, read_output, terminate, write_stdin
from sdk.tools.shell import shell


@dataclass(frozen=True)
class ToolSpec:
    name: str
    run: TypedTool[Any]
    description: str

    @cached_property
    def input_schema(self) -> JSON:
        model: type[Arguments] = self.run.model
        return model.input_schema()

    def as_json(self) -> JSON:
        return {"name": self.name, "description": self.description, "inputSchema": self.input_schema}


SPECS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "list_environments",
        list_environments,
        "List the environments (remote machines) this workspace can use, with their names.",
    ),
    ToolSpec(
        "shell",
        shell,
        "Run a command in an environment and wait for it to finish. Returns stdout, stderr and the exit "
        "code (a non-zero exit is not an error). The process is killed at the timeout.",
    ),
    ToolSpec(
        "exec_command",
        exec_command,
        'Start a long-running process (stdin open) and return {"session_id"} at once. Use write_stdin, '
        "read_output and terminate with the session.",
    ),
    ToolSpec("write_stdin", write_stdin, "Write to the stdin of an exec_command session."),
    ToolSpec(
        "read_output",
        read_output,
        "Read what an exec_command session printed, waiting up to yield_time_ms for something new. Without "
        "`since`, continues where the last read_output stopped.",
    ),
    ToolSpec("terminate", terminate, "Kill an exec_command session's process and forget the session."),
    ToolSpec(
        "read_file",
        read_file,
        "Read a file. Returns text when it is UTF-8, else base64 (structuredContent.encoding says which).",
    ),
    ToolSpec("write_file", write_file, "Write a file (created or replaced), from text or base64 content."),
    ToolSpec(
        "apply_patch",
        apply_patch,
        "Apply a patch in the codex format (*** Begin Patch … *** End Patch) to files in an environment.",
    ),
    ToolSpec(
        "copy_path",
        copy_path,
        "Copy a file, or a directory with recursive, from one environment to another (or within one).",
    ),
)

_TOOLS = {spec.name: spec for spec in SPECS}


def tool_specs() -> list[JSON]:
    """MCP ``tools/list`` entries, in registration order."""
    return [spec.as_json() for spec in SPECS]


def get_tool(name: str) -> Tool | None:
    spec = _TOOLS.get(name)
    return spec.run if spec is not None else None
