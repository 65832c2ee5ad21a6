"""Per-workspace CODEX_HOME directories and the ``config.toml`` rendered into them.

Each workspace's app-server runs with ``CODEX_HOME=<CXG_TMP_ROOT>/<workspace_id>`` (0700).
Workspace ids become path components, so only a conservative alphabet is accepted and every
path is checked to resolve directly under the root: an id or a symlink can never make the
gateway create, fill or delete a directory elsewhere.

``config.toml`` is rendered by a pure function from ``CodexConfig`` and written fresh (0600) on
every spawn, after any restore, so it always reflects the gateway's current settings and is
never taken from a persisted archive. ``environments.toml`` (no local environment) likewise.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tomli_w
from django.conf import settings

CONFIG_FILE = "config.toml"
# codex's environments file: without the local environment (the gateway host) a thread's tools
# can only run in the environments the gateway registers, its executors. Written every spawn.
ENVIRONMENTS_FILE = "environments.toml"
ENVIRONMENTS_TOML = tomli_w.dumps({"include_local": False})
# Letters, digits, '_', '-', '.'; starting with a letter or digit, so never '.' or '..'.
_WORKSPACE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TABLE_NAME = re.compile(r"[A-Za-z0-9_-]+")
APPROVAL_POLICIES = frozenset({"untrusted", "on-failure", "on-request", "never"})
SANDBOX_MODES = frozenset({"read-only", "workspace-write", "danger-full-access"})
WIRE_APIS = frozenset({"responses", "chat"})


class CodexHomeError(ValueError):
    """A workspace id or path the gateway refuses to use."""


def validate_workspace_id(workspace_id: str) -> str:
    if not isinstance(workspace_id, str) or not _WORKSPACE_ID.fullmatch(workspace_id):
        raise CodexHomeError(f"invalid workspace id {workspace_id!r}")
    return workspace_id


def tmp_root() -> Path:
    """The resolved ``CXG_TMP_ROOT``, created 0700 if missing."""
    root = Path(settings.CXG_TMP_ROOT)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root.resolve()


def _inside_root(path: Path, root: Path) -> Path:
    """``path`` as a direct child of ``root``, refusing anything else (symlinks included)."""
    absolute = Path(os.path.abspath(path))
    if absolute.name in ("", ".", "..") or absolute.parent.resolve() != root:
        raise CodexHomeError(f"{path} is not directly under {root}")
    candidate = root / absolute.name
    if candidate.is_symlink():
        raise CodexHomeError(f"{path} is a symlink")
    return candidate


def home_path(workspace_id: str) -> Path:
    """Where the workspace's CODEX_HOME lives (not created)."""
    root = tmp_root()
    return _inside_root(root / validate_workspace_id(workspace_id), root)


def create_home(workspace_id: str) -> Path:
    """Create the workspace's CODEX_HOME (idempotent) with mode 0700, chmod-ed explicitly
    because mkdir's mode is filtered by the umask and an existing directory keeps its mode."""
    path = home_path(workspace_id)
    path.mkdir(mode=0o700, exist_ok=True)
    if not stat.S_ISDIR(path.lstat().st_mode):
        raise CodexHomeError(f"{path} exists and is not a directory")
    os.chmod(path, 0o700)
    return path


def remove_home(path: Path) -> None:
    """Delete a CODEX_HOME; refuses any path that is not a directory directly under the root."""
    root = tmp_root()
    target = _inside_root(path, root)
    if target.exists():
        shutil.rmtree(target)


# --- config.toml -----------------------------------------------------------------------------


@dataclass(frozen=True)
class McpServer:
    """One ``[mcp_servers.<name>]`` block: a streamable-HTTP MCP server. codex sends
    ``Authorization: Bearer <value of bearer_token_env_var in its own environment>``, so the
    token is in neither this file nor a URL."""

    name: str
    url: str
    bearer_token_env_var: str | None = None
    # REST and IM callers cannot answer approval prompts, so the gateway's own tools are approved.
    default_tools_approval_mode: str | None = "approve"


@dataclass(frozen=True)
class CodexConfig:
    model_provider: str
    model: str
    provider_name: str
    base_url: str
    env_key: str
    wire_api: str = "responses"
    trusted_paths: Sequence[str] = ()
    approval_policy: str = "never"
    sandbox_mode: str = "workspace-write"
    mcp_servers: Sequence[McpServer] = ()


def _validate(config: CodexConfig) -> None:
    if not config.model_provider or not _TABLE_NAME.fullmatch(config.model_provider):
        raise CodexHomeError(f"model_provider {config.model_provider!r} must be a non-empty [A-Za-z0-9_-] name")
    if not config.base_url.startswith(("http://", "https://")):
        raise CodexHomeError(f"base_url {config.base_url!r} must be an http(s) URL")
    if not _ENV_NAME.fullmatch(config.env_key):
        raise CodexHomeError(f"env_key {config.env_key!r} is not an environment variable name")
    if config.wire_api not in WIRE_APIS:
        raise CodexHomeError(f"wire_api {config.wire_api!r} must be one of {sorted(WIRE_APIS)}")
    if config.approval_policy not in APPROVAL_POLICIES:
        raise CodexHomeError(f"approval_policy {config.approval_policy!r} must be one of {sorted(APPROVAL_POLICIES)}")
    if config.sandbox_mode not in SANDBOX_MODES:
        raise CodexHomeError(f"sandbox_mode {config.sandbox_mode!r} must be one of {sorted(SANDBOX_MODES)}")
    names = [server.name for server in config.mcp_servers]
    if len(set(names)) != len(names):
        raise CodexHomeError(f"duplicate MCP server names in {names}")
    for server in config.mcp_servers:
        if not _TABLE_NAME.fullmatch(server.name):
            raise CodexHomeError(f"MCP server name {server.name!r} must be a non-empty [A-Za-z0-9_-] name")
        if not server.url.startswith(("http://", "https://")):
            raise CodexHomeError(f"MCP server {server.name!r} url {server.url!r} must be an http(s) URL")
        if server.bearer_token_env_var is not None and not _ENV_NAME.fullmatch(server.bearer_token_env_var):
            raise CodexHomeError(f"MCP server {server.name!r} has an invalid bearer_token_env_var")
    for path in config.trusted_paths:
        if not path.startswith("/"):
            raise CodexHomeError(f"trusted path {path!r} must be absolute")


def render_config_toml(config: CodexConfig) -> str:
    """The complete ``config.toml`` for one spawn (validated; TOML quoting by tomli-w)."""
    _validate(config)
    document: dict[str, Any] = {
        "model_provider": config.model_provider,
        # Empty: codex's own default model (the newest it knows, so the TUI offers no upgrade).
        **({"model": config.model} if config.model else {}),
        "approval_policy": config.approval_policy,
        "sandbox_mode": config.sandbox_mode,
        # Keep the child off the internet: no update check, analytics, plugin sync or apps (codex-wire §C.1).
        "check_for_update_on_startup": False,
        "model_providers": {
            config.model_provider: {
                "name": config.provider_name,
                "base_url": config.base_url,
                "env_key": config.env_key,
                "wire_api": config.wire_api,
            }
        },
        "projects": {path: {"trust_level": "trusted"} for path in dict.fromkeys(config.trusted_paths)},
        # codex's own exec and patch tools: they run in the thread's environments, which are the
        # workspace's executors only (environments.toml removes the local one, the gateway host).
        "features": {
            "shell_tool": True,
            "unified_exec": True,
            "apply_patch_freeform": True,
            "plugins": False,
            "apps": False,
            "remote_plugin": False,
            "in_app_updates": False,
        },
        "analytics": {"enabled": False},
    }
    if config.mcp_servers:
        # Each block: the server's fields but its name, which is the table's, and those it leaves unset.
        document["mcp_servers"] = {
            server.name: {key: value for key, value in asdict(server).items() if key != "name" and value is not None}
            for server in config.mcp_servers
        }
    return tomli_w.dumps(document)


def config_from_settings(mcp_servers: Sequence[McpServer] = (), base_url: str | None = None) -> CodexConfig:
    return CodexConfig(
        model_provider=settings.CXG_MODEL_PROVIDER,
        model=settings.CXG_MODEL,
        provider_name=settings.CXG_MODEL_PROVIDER_NAME,
        base_url=base_url or settings.CXG_MODEL_PROVIDER_BASE_URL,
        env_key=settings.CXG_MODEL_PROVIDER_ENV_KEY,
        wire_api=settings.CXG_MODEL_PROVIDER_WIRE_API,
        trusted_paths=settings.CXG_PROJECT_TRUSTED_PATHS,
        approval_policy=settings.CXG_APPROVAL_POLICY,
        sandbox_mode=settings.CXG_SANDBOX_MODE,
        mcp_servers=mcp_servers,
    )


def write_config(home: Path, text: str, name: str = CONFIG_FILE) -> Path:
    """Replace ``config.toml`` (or another file codex reads, ``name``) atomically with mode 0600
    (never following a planted symlink)."""
    target = home / name
    temporary = home / f".{name}.tmp"
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(temporary, 0o600)
    os.replace(temporary, target)
    return target
