"""What the TUI proxy does with single frames, as pure functions (no I/O).

Client → app-server: requests for local-IO methods are refused. They would run inside the
gateway, on the shared app-server's machine, not on the user's executor (and features such as
``shell_tool = false`` do not gate them). Everything else passes through verbatim, unknown
methods included: the TUI uses experimental methods the schema does not list.

App-server → client: approval-type requests are answered by the gateway when
``CXG_APPROVAL_MODE`` is ``accept``; unanswered they would stall the turn for callers that cannot
answer (and a TUI user would be asked about commands the gateway runs on their executor anyway).
One warning is not passed on (``false_sandbox_warning``): codex's "could not find bubblewrap on
PATH", which it sends because the app-server's working directory is ``/`` (codex 0.171.0 does
not trust a bwrap under its working directory, and every directory is under ``/``); bubblewrap
is there, and no command runs in a sandbox on the gateway host anyway.

Frames are JSON-RPC as codex speaks it: one object per frame, no ``"jsonrpc"`` member, ids
that are integers or strings. The app-server ignores binary frames today; they are inspected
all the same, so a later codex that reads them cannot be used to slip past the filter.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

Frame = str | bytes
ApprovalMode = Literal["accept", "forward"]

METHOD_DISABLED = -32601

# Local-IO methods of codex app-server 0.169.0: shell commands, process spawning and file access
# on the app-server's machine. ``process/*`` (spawn, writeStdin, kill, resizePty) and
# ``fuzzyFileSearch*`` (walks the local disk) are experimental methods the TUI may use.
BLOCKED_METHODS: Final = frozenset({"thread/shellCommand", "command/exec", "fuzzyFileSearch"})
BLOCKED_PREFIXES: Final = ("command/exec/", "fs/", "process/", "fuzzyFileSearch/")

# config.toml tables a client must not override, per thread (thread/start|resume|fork ``config``) or
# in CODEX_HOME (config/* writes): they would change the model's tools (features),
# run commands on the gateway (mcp_servers, notify, hooks, profiles), or send the workspace's model
# credential elsewhere (model_providers).
PROTECTED_CONFIG: Final = frozenset(
    {
        "features",
        "mcp_servers",
        "model_providers",
        "model_provider",
        "notify",
        "hooks",
        "profiles",
        "profile",
        "shell_environment_policy",
        "sandbox_mode",
        "sandbox_workspace_write",
    }
)
_CONFIG_CARRIERS: Final = frozenset({"thread/start", "thread/resume", "thread/fork"})
# Requests that change the model provider without naming a config key (codex 0.171.0 added
# modelProvider/default/set {providerId}: new threads would use another configured provider, e.g.
# a built-in one pointing at this host or at a service that is not the workspace's).
_PROVIDER_SWITCHES: Final = frozenset({"modelProvider/default/set"})

# Requests that select a thread's or turn's environments. codex's own environment ``local`` is the
# gateway host: a client that names it would have the model's tools run there (measured: turn/start
# with environments [{environmentId: "local"}] let exec_command run on the app-server's machine).
_ENVIRONMENT_CARRIERS: Final = frozenset(
    {"thread/start", "thread/resume", "thread/fork", "turn/start", "thread/settings/update"}
)
LOCAL_ENVIRONMENT: Final = "local"

# The gateway's answer to each approval-type request: accept, grant no extra permissions, give
# no answers, accept the elicitation without content.
APPROVAL_ANSWERS: Final[dict[str, dict[str, Any]]] = {
    "item/commandExecution/requestApproval": {"decision": "accept"},
    "item/fileChange/requestApproval": {"decision": "accept"},
    "item/permissions/requestApproval": {"permissions": {}},
    "item/tool/requestUserInput": {"answers": {}},
    "mcpServer/elicitation/request": {"action": "accept", "content": None, "_meta": None},
}
# Server frames that name none of these are not parsed (the app-server writes method names
# unescaped); most frames are streaming notifications, some of them megabytes long.
_APPROVAL_TEXT: Final = tuple(APPROVAL_ANSWERS)
_APPROVAL_BYTES: Final = tuple(method.encode() for method in APPROVAL_ANSWERS)


def approval_mode(value: str) -> ApprovalMode:
    if value == "forward":
        return "forward"
    if value == "accept":
        return "accept"
    raise ValueError(f"unknown approval mode {value!r}")


def is_blocked(method: str) -> bool:
    return method in BLOCKED_METHODS or method.startswith(BLOCKED_PREFIXES)


def refusal_message(method: str) -> str:
    return (
        f"{method} is disabled on the codexgw app gateway: it would run inside the gateway, not on your "
        "machine. Ask the agent to use its executor tools (exec_command, read_file, apply_patch from the "
        "agentserver MCP server), which run on your registered executor."
    )


Refusal = Literal["local IO", "protected config", "local environment"]


@dataclass(frozen=True)
class ClientVerdict:
    """``forward`` the frame unchanged, or not; ``reply`` (a text frame) goes back to the client.
    A refused frame names its ``method`` (a batch: the refused ones, comma-separated) and why."""

    forward: bool
    reply: str | None = None
    method: str = ""
    refusal: Refusal | None = None


FORWARD: Final = ClientVerdict(forward=True)


class _Pairs(dict[str, Any]):
    """A decoded JSON object that remembers every value of a repeated ``method`` key."""

    methods: list[Any]


def _object(pairs: list[tuple[str, Any]]) -> _Pairs:
    decoded = _Pairs(pairs)
    decoded.methods = [value for key, value in pairs if key == "method"]
    return decoded


def decode(frame: Frame, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    """The frame's JSON, or None when it is none (or nested too deep to parse)."""
    try:
        return json.loads(frame, object_pairs_hook=object_pairs_hook)
    except (ValueError, RecursionError):
        return None


def encode(message: Any) -> str:
    return json.dumps(message, separators=(",", ":"))


def decode_object(frame: Frame, needle: str) -> dict[str, Any] | None:
    """A text frame that contains ``needle``, decoded when it is a JSON object (a cheap look
    before the parse: most frames are not the one wanted); else None."""
    if isinstance(frame, bytes) or needle not in frame:
        return None
    message = decode(frame)
    return message if isinstance(message, dict) else None


def request_named(frame: Frame, method: str) -> dict[str, Any] | None:
    """The frame decoded when it is a ``method`` request (one with an id), else None."""
    message = decode_object(frame, method)
    if message is None or message.get("method") != method or message.get("id") is None:
        return None
    return message


def _blocked_method(message: Any) -> str | None:
    """The blocked method a request names; every value of a duplicated ``method`` key counts,
    whichever one the server would read."""
    if not isinstance(message, _Pairs):
        return None
    for method in message.methods:
        if isinstance(method, str) and is_blocked(method):
            return method
    return None


def _error_reply(request_id: Any, method: str, message: str | None = None) -> dict[str, Any]:
    return {"id": request_id, "error": {"code": METHOD_DISABLED, "message": message or refusal_message(method)}}


def _protected_keys(value: Any) -> set[str]:
    """Protected config roots named anywhere in ``value``: as object keys (nested tables or dotted
    ``a.b`` keys) or as key paths (``keyPath: "features.shell_tool"``)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if isinstance(key, str) and key.split(".", 1)[0] in PROTECTED_CONFIG:
                found.add(key.split(".", 1)[0])
            if key in ("keyPath", "key_path") and isinstance(inner, str) and inner.split(".", 1)[0] in PROTECTED_CONFIG:
                found.add(inner.split(".", 1)[0])
            if (
                key in ("keyPath", "key_path")
                and isinstance(inner, list)
                and inner
                and isinstance(inner[0], str)
                and inner[0] in PROTECTED_CONFIG
            ):
                found.add(str(inner[0]))
            found |= _protected_keys(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= _protected_keys(inner)
    return found


def _switches_off(key: str, value: Any) -> bool:
    """A per-thread override that only turns a feature or an MCP server off (the TUI's thread-title
    thread starts with ``features.<name>: false`` and ``mcp_servers: {<name>: {enabled: false}}``):
    it can take the model's tools away, never add a command or send the credential elsewhere."""
    root, _, rest = key.partition(".")
    if root == "features":
        return value is False if rest else isinstance(value, dict) and all(inner is False for inner in value.values())
    if root != "mcp_servers":
        return False
    if rest.endswith(".enabled") and rest.count(".") == 1:
        return value is False
    servers = {rest: value} if rest and "." not in rest else value if not rest else None
    return isinstance(servers, dict) and all(server == {"enabled": False} for server in servers.values())


def _without_switch_offs(config: Any) -> Any:
    if not isinstance(config, dict):
        return config
    return {key: value for key, value in config.items() if not (isinstance(key, str) and _switches_off(key, value))}


def _config_override(message: Any) -> str | None:
    """Why a request may not change the configuration it tries to change, or None."""
    if not isinstance(message, _Pairs) or not isinstance(message.get("method"), str):
        return None
    method = message["method"]
    params = message.get("params")
    if method in _CONFIG_CARRIERS and isinstance(params, dict):
        touched = _protected_keys(_without_switch_offs(params.get("config")))
    elif method.startswith("config/") and "write" in method.lower():
        touched = _protected_keys(params)
    elif method in _PROVIDER_SWITCHES:
        touched = {"model_provider"}
    else:
        return None
    if not touched:
        return None
    return (
        f"{method} may not override {', '.join(sorted(touched))} on the codexgw app gateway: the gateway "
        "sets them (no local shell, MCP servers and model provider are the workspace's)."
    )


def _names_local_environment(message: Any) -> str | None:
    """The method of a request that selects codex's local environment (the gateway host) by name."""
    if not isinstance(message, _Pairs):
        return None
    carriers = [method for method in message.methods if isinstance(method, str) and method in _ENVIRONMENT_CARRIERS]
    params = message.get("params")
    environments = params.get("environments") if isinstance(params, dict) else None
    if not carriers or not isinstance(environments, list):
        return None
    if any(isinstance(entry, dict) and entry.get("environmentId") == LOCAL_ENVIRONMENT for entry in environments):
        return carriers[0]
    return None


def local_environment_message(method: str) -> str:
    return (
        f"{method} may not select the environment {LOCAL_ENVIRONMENT!r} on the codexgw app gateway: it is the "
        "gateway's own machine. Name one of the workspace's executors, or none for the default one."
    )


def inspect_client_frame(frame: Frame) -> ClientVerdict:
    """Refuse requests for blocked methods: an error reply when they carry an id, silently when
    they do not (notifications, ``id: null``). A batch (the app-server rejects arrays today) is
    refused whole if any element is blocked."""
    message = decode(frame, _object)
    if isinstance(message, list):
        blocked = [(element, method) for element in message if (method := _blocked_method(element))]
        if not blocked:
            return FORWARD
        replies = [_error_reply(element["id"], method) for element, method in blocked if element.get("id") is not None]
        return ClientVerdict(
            forward=False,
            reply=encode(replies) if replies else None,
            method=", ".join(method for _, method in blocked),
            refusal="local IO",
        )
    method = _blocked_method(message)
    reason = None if method is not None else _config_override(message)
    refusal: Refusal = "local IO" if method is not None else "protected config"
    local = _names_local_environment(message) if method is None and reason is None else None
    if local is not None:
        reason = local_environment_message(local)
        refusal = "local environment"
    if method is None and reason is None:
        return FORWARD
    refused = method or local or message["method"]
    if message.get("id") is None:
        return ClientVerdict(forward=False, method=refused, refusal=refusal)
    reply = encode(_error_reply(message["id"], refused, reason))
    return ClientVerdict(forward=False, reply=reply, method=refused, refusal=refusal)


def approval_answer(frame: Frame, mode: ApprovalMode) -> str | None:
    """The gateway's reply to an approval-type server request (the frame is then not
    forwarded), or None to forward the frame to the client."""
    if mode != "accept":
        return None
    if isinstance(frame, str):
        if not any(marker in frame for marker in _APPROVAL_TEXT):
            return None
    elif not any(marker in frame for marker in _APPROVAL_BYTES):
        return None
    message = decode(frame)
    if not isinstance(message, dict) or message.get("id") is None:
        return None
    method = message.get("method")
    answer = APPROVAL_ANSWERS.get(method) if isinstance(method, str) else None
    if answer is None:
        return None
    return encode({"id": message["id"], "result": answer})


# The start of codex's warning (0.171.0); a later wording is passed on, as any other frame.
FALSE_SANDBOX_WARNING: Final = "Codex could not find bubblewrap on PATH"


def false_sandbox_warning(frame: Frame) -> bool:
    """The frame is the ``configWarning`` notification about bubblewrap (see the module docstring)."""
    message = decode_object(frame, FALSE_SANDBOX_WARNING)
    if message is None or message.get("method") != "configWarning" or "id" in message:
        return False
    params = message.get("params")
    summary = params.get("summary") if isinstance(params, dict) else None
    return isinstance(summary, str) and summary.startswith(FALSE_SANDBOX_WARNING)
