"""The tool set shared by the SDK REST surface and env-mcp, in registration order.

``tool_specs()`` is MCP ``tools/list`` (``{name, description, inputSchema}``); ``get_tool(name)``
the implementation, ``async (ToolContext, arguments) -> ToolResult``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdk.tools.base import JSON, Tool
from sdk.tools.copy import copy_path
from sdk.tools.environments import list_environments
from sdk.tools.files import read_file, write_file
from sdk.tools.patch import apply_patch
from sdk.tools.processes import exec_command, read_output, terminate, write_stdin
from sdk.tools.shell import shell


@dataclass(frozen=True)
class ToolSpec:
    name: str
    run: Tool
    description: str
    input_schema: JSON

    def as_json(self) -> JSON:
        return {"name": self.name, "description": self.description, "inputSchema": self.input_schema}


def _schema(properties: JSON, required: list[str]) -> JSON:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _env(what: str = "Environment") -> JSON:
    return {"type": "string", "description": f"{what} name, as listed by list_environments."}


_ARGV = {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": 'argv, e.g. ["ls", "-la"].'}
_CWD = {"type": "string", "description": "Absolute working directory; defaults to the home directory."}
_ENV = {
    "type": "object",
    "additionalProperties": {"type": "string"},
    "description": "Environment variables, on top of PATH, HOME and LANG defaults.",
}
_SESSION = {"type": "string", "description": "The session_id exec_command returned."}
_OPTIONAL_ENV = {"type": "string", "description": "Optional: the session's environment name, checked if given."}

SPECS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "list_environments",
        list_environments,
        "List the environments (remote machines) this workspace can use, with their names.",
        _schema({}, []),
    ),
    ToolSpec(
        "shell",
        shell,
        "Run a command in an environment and wait for it to finish. Returns stdout, stderr and the exit "
        "code (a non-zero exit is not an error). The process is killed at the timeout.",
        _schema(
            {
                "environment_id": _env(),
                "command": _ARGV,
                "cwd": _CWD,
                "env": _ENV,
                "timeout_ms": {"type": "integer", "minimum": 1, "description": "Default 60000."},
                "max_output_bytes": {
                    "type": "integer",
                    "minimum": 1024,
                    "description": "Per stream; the middle of longer output is omitted. Default 1048576.",
                },
            },
            ["environment_id", "command"],
        ),
    ),
    ToolSpec(
        "exec_command",
        exec_command,
        'Start a long-running process (stdin open) and return {"session_id"} at once. Use write_stdin, '
        "read_output and terminate with the session.",
        _schema(
            {
                "environment_id": _env(),
                "command": _ARGV,
                "cwd": _CWD,
                "env": _ENV,
                "tty": {"type": "boolean", "description": "Run under a pseudo-terminal. Default false."},
            },
            ["environment_id", "command"],
        ),
    ),
    ToolSpec(
        "write_stdin",
        write_stdin,
        "Write to the stdin of an exec_command session.",
        _schema(
            {
                "session_id": _SESSION,
                "chars": {"type": "string", "description": 'Text to write (UTF-8), e.g. "ls\\n".'},
                "data_b64": {"type": "string", "description": "Bytes to write, base64 (instead of chars)."},
                "environment_id": _OPTIONAL_ENV,
            },
            ["session_id"],
        ),
    ),
    ToolSpec(
        "read_output",
        read_output,
        "Read what an exec_command session printed, waiting up to yield_time_ms for something new. Without "
        "`since`, continues where the last read_output stopped.",
        _schema(
            {
                "session_id": _SESSION,
                "since": {"type": "integer", "minimum": 0, "description": "Return chunks with seq > since."},
                "yield_time_ms": {"type": "integer", "minimum": 0, "description": "Default 1000."},
                "environment_id": _OPTIONAL_ENV,
            },
            ["session_id"],
        ),
    ),
    ToolSpec(
        "terminate",
        terminate,
        "Kill an exec_command session's process and forget the session.",
        _schema({"session_id": _SESSION, "environment_id": _OPTIONAL_ENV}, ["session_id"]),
    ),
    ToolSpec(
        "read_file",
        read_file,
        "Read a file. Returns text when it is UTF-8, else base64 (structuredContent.encoding says which).",
        _schema(
            {
                "environment_id": _env(),
                "path": {"type": "string", "description": "Absolute path."},
                "offset": {"type": "integer", "minimum": 0, "description": "First byte to read. Default 0."},
                "limit": {"type": "integer", "minimum": 0, "description": "Bytes to read; 0 = to the end (8 MiB max)."},
            },
            ["environment_id", "path"],
        ),
    ),
    ToolSpec(
        "write_file",
        write_file,
        "Write a file (created or replaced), from text or base64 content.",
        _schema(
            {
                "environment_id": _env(),
                "path": {"type": "string", "description": "Absolute path."},
                "content": {"type": "string", "description": "Text content (UTF-8)."},
                "content_base64": {"type": "string", "description": "Binary content, base64 (instead of content)."},
                "create_parents": {"type": "boolean", "description": "Create missing parent directories."},
            },
            ["environment_id", "path"],
        ),
    ),
    ToolSpec(
        "apply_patch",
        apply_patch,
        "Apply a patch in the codex format (*** Begin Patch … *** End Patch) to files in an environment.",
        _schema(
            {
                "environment_id": _env(),
                "patch": {"type": "string", "description": "The patch text."},
                "cwd": {"type": "string", "description": "Absolute directory that relative paths in the patch are in."},
            },
            ["environment_id", "patch"],
        ),
    ),
    ToolSpec(
        "copy_path",
        copy_path,
        "Copy a file, or a directory with recursive, from one environment to another (or within one).",
        _schema(
            {
                "source_environment_id": _env("Source environment"),
                "source_path": {"type": "string", "description": "Absolute path on the source."},
                "destination_environment_id": _env("Destination environment"),
                "destination_path": {
                    "type": "string",
                    "description": "Absolute path of the copy; an existing file is replaced, a directory is not.",
                },
                "recursive": {"type": "boolean", "description": "Required to copy a directory."},
                "timeout_ms": {"type": "integer", "minimum": 1, "description": "Default 600000."},
                "transport": {"type": "string", "enum": ["auto", "http", "ws"], "description": "Default auto."},
            },
            ["source_environment_id", "source_path", "destination_environment_id", "destination_path"],
        ),
    ),
)

_TOOLS = {spec.name: spec for spec in SPECS}


def tool_specs() -> list[JSON]:
    """MCP ``tools/list`` entries, in registration order."""
    return [spec.as_json() for spec in SPECS]


def get_tool(name: str) -> Tool | None:
    spec = _TOOLS.get(name)
    return spec.run if spec is not None else None
