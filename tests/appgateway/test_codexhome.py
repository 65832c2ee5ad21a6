"""CODEX_HOME directories and config.toml rendering."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from appgateway import codexhome
from appgateway.codexhome import CodexConfig, CodexHomeError, McpServer, render_config_toml


@pytest.fixture
def root(settings, tmp_path: Path) -> Path:
    settings.CXG_TMP_ROOT = str(tmp_path / "root")
    return tmp_path / "root"


def base_config(**overrides: Any) -> CodexConfig:
    values: dict[str, Any] = {
        "model_provider": "modelserver",
        "model": "gpt-5.5",
        "provider_name": "modelserver",
        "base_url": "http://llmproxy:8085/v1",
        "env_key": "CODEX_API_KEY",
    }
    values.update(overrides)
    return CodexConfig(**values)


def test_home_is_created_0700_under_the_root_even_with_a_permissive_umask(root):
    previous = os.umask(0)
    try:
        home = codexhome.create_home("ws-1")
        os.chmod(home, 0o755)  # noqa: S103 - a loosened mode the next create must undo
        again = codexhome.create_home("ws-1")  # idempotent, and it re-applies the mode
    finally:
        os.umask(previous)
    assert home == again == root.resolve() / "ws-1"
    assert home.stat().st_mode & 0o777 == 0o700
    assert root.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "a\\b", "/abs", ".hidden", "-x", "a\0b", "x" * 129])
def test_bad_workspace_ids_are_refused(root, bad):
    with pytest.raises(CodexHomeError):
        codexhome.create_home(bad)
    assert not root.exists() or list(root.iterdir()) == []


def test_a_symlinked_workspace_dir_is_refused(root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    (root / "ws-link").symlink_to(outside)
    with pytest.raises(CodexHomeError, match="symlink"):
        codexhome.create_home("ws-link")
    with pytest.raises(CodexHomeError, match="symlink"):
        codexhome.remove_home(root / "ws-link")
    assert outside.exists()


def test_remove_refuses_paths_outside_the_root(root, tmp_path):
    home = codexhome.create_home("ws-1")
    sibling = tmp_path / "root-evil"
    sibling.mkdir()
    nested = home / "sessions"
    nested.mkdir()
    for path in (sibling, tmp_path, root, nested, root / ".." / "root-evil", Path("/")):
        with pytest.raises(CodexHomeError):
            codexhome.remove_home(path)
    assert sibling.exists()
    assert nested.exists()
    codexhome.remove_home(home)
    assert not home.exists()
    codexhome.remove_home(home)  # already gone: a no-op


def test_rendered_config_has_every_switch():
    config = base_config(
        trusted_paths=["/tmp", "/work/a b"],
        approval_policy="on-request",
        sandbox_mode="workspace-write",
        mcp_servers=[
            McpServer(
                "agentserver",
                "http://127.0.0.1:8000/mcp/env/ws-1",
                bearer_token_env_var="CXG_WORKSPACE_TOKEN",
            )
        ],
    )
    parsed = tomllib.loads(render_config_toml(config))
    assert parsed == {
        "model_provider": "modelserver",
        "model": "gpt-5.5",
        "approval_policy": "on-request",
        "sandbox_mode": "workspace-write",
        "check_for_update_on_startup": False,
        "model_providers": {
            "modelserver": {
                "name": "modelserver",
                "base_url": "http://llmproxy:8085/v1",
                "env_key": "CODEX_API_KEY",
                "wire_api": "responses",
            }
        },
        "projects": {"/tmp": {"trust_level": "trusted"}, "/work/a b": {"trust_level": "trusted"}},
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
        "mcp_servers": {
            "agentserver": {
                "url": "http://127.0.0.1:8000/mcp/env/ws-1",
                "bearer_token_env_var": "CXG_WORKSPACE_TOKEN",
                "default_tools_approval_mode": "approve",
            }
        },
    }


def test_hostile_strings_round_trip_as_data():
    nasty = 'a"b\\c\nd\te\u2028f]\n[features]\nplugins = true\n#'
    config = base_config(
        model=nasty,
        provider_name=nasty,
        trusted_paths=[f"/tmp/{nasty}"],
        mcp_servers=[McpServer("m", f"http://127.0.0.1/{nasty}")],
    )
    parsed = tomllib.loads(render_config_toml(config))
    assert parsed["model"] == nasty
    assert parsed["model_providers"]["modelserver"]["name"] == nasty
    assert list(parsed["projects"]) == [f"/tmp/{nasty}"]
    assert parsed["mcp_servers"]["m"] == {
        "url": f"http://127.0.0.1/{nasty}",
        "default_tools_approval_mode": "approve",
    }
    assert parsed["features"]["plugins"] is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model_provider": ""}, "model_provider"),
        ({"model_provider": "a.b"}, "model_provider"),
        ({"base_url": "ftp://x"}, "base_url"),
        ({"env_key": "1BAD"}, "env_key"),
        ({"wire_api": "grpc"}, "wire_api"),
        ({"approval_policy": "sometimes"}, "approval_policy"),
        ({"sandbox_mode": "none"}, "sandbox_mode"),
        ({"trusted_paths": ["relative"]}, "absolute"),
        ({"mcp_servers": [McpServer("a", "http://x"), McpServer("a", "http://y")]}, "duplicate"),
        ({"mcp_servers": [McpServer("a b", "http://x")]}, "MCP server name"),
        ({"mcp_servers": [McpServer("a", "")]}, "must be an http"),
        ({"mcp_servers": [McpServer("a", "file:///x")]}, "must be an http"),
        ({"mcp_servers": [McpServer("a", "http://x", bearer_token_env_var="BAD-NAME")]}, "bearer_token_env_var"),
    ],
)
def test_invalid_configs_are_refused(overrides, message):
    with pytest.raises(CodexHomeError, match=message):
        render_config_toml(base_config(**overrides))


def test_an_empty_model_leaves_the_choice_to_codex():
    parsed = tomllib.loads(render_config_toml(base_config(model="")))
    assert "model" not in parsed
    assert parsed["model_provider"] == "modelserver"


def test_config_from_settings_uses_the_reference_defaults(settings):
    config = codexhome.config_from_settings()
    assert (config.model_provider, config.model, config.env_key, config.wire_api) == (
        settings.CXG_MODEL_PROVIDER,
        settings.CXG_MODEL,
        "CODEX_API_KEY",
        "responses",
    )
    assert config.trusted_paths == ["/tmp"]
    assert config.mcp_servers == ()


def test_write_config_is_0600_and_replaces_a_planted_symlink(root, tmp_path):
    home = codexhome.create_home("ws-1")
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (home / "config.toml").symlink_to(victim)
    path = codexhome.write_config(home, "model = 'x'\n")
    assert path.read_text() == "model = 'x'\n"
    assert not path.is_symlink()
    assert path.stat().st_mode & 0o777 == 0o600
    assert victim.read_text() == "untouched"
