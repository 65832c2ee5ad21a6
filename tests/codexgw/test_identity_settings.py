"""How the identity backend and the model defaults follow from the environment (read at start)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PROBE = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({n: getattr(s, n) for n in ('CODEXGW_IDENTITY_BACKEND', 'CXG_MODEL_PROVIDER', "
    "'CXG_MODEL_PROVIDER_BASE_URL', 'CXG_CODEX_API_KEY')}))"
)


def settings_under(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    base = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "codexgw.settings", "CODEXGW_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env={**base, **env}, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_without_an_agentserver_the_gateway_is_builtin_and_talks_to_openai(tmp_path: Path) -> None:
    assert settings_under({"OPENAI_API_KEY": "sk-openai"}, tmp_path) == {
        "CODEXGW_IDENTITY_BACKEND": "builtin",
        "CXG_MODEL_PROVIDER": "codexgw",
        "CXG_MODEL_PROVIDER_BASE_URL": "https://api.openai.com/v1",
        "CXG_CODEX_API_KEY": "sk-openai",
    }


def test_cxg_codex_api_key_wins_over_openai_api_key(tmp_path: Path) -> None:
    env = {"OPENAI_API_KEY": "sk-openai", "CXG_CODEX_API_KEY": "sk-cxg"}
    assert settings_under(env, tmp_path)["CXG_CODEX_API_KEY"] == "sk-cxg"


def test_an_agentserver_url_selects_agentserver_mode_unchanged(tmp_path: Path) -> None:
    env = {"CXG_AGENTSERVER_INTERNAL_URL": "http://agentserver:8080", "OPENAI_API_KEY": "sk-openai"}
    assert settings_under(env, tmp_path) == {
        "CODEXGW_IDENTITY_BACKEND": "agentserver",
        "CXG_MODEL_PROVIDER": "modelserver",
        "CXG_MODEL_PROVIDER_BASE_URL": "http://llmproxy:8085/v1",
        "CXG_CODEX_API_KEY": "",  # OPENAI_API_KEY is a built-in mode convenience only
    }


def test_the_backend_can_be_named_and_a_wrong_name_fails_loudly(tmp_path: Path) -> None:
    env = {"CXG_AGENTSERVER_INTERNAL_URL": "http://agentserver:8080", "CODEXGW_IDENTITY_BACKEND": "builtin"}
    assert settings_under(env, tmp_path)["CODEXGW_IDENTITY_BACKEND"] == "builtin"
    with pytest.raises(AssertionError, match="CODEXGW_IDENTITY_BACKEND"):
        settings_under({"CODEXGW_IDENTITY_BACKEND": "ldap"}, tmp_path)
