"""The OpenAPI schema is served, valid, and documents every control-plane route."""

from __future__ import annotations

from io import StringIO

import yaml
from django.core.management import call_command


def test_schema_generates_and_validates_without_warnings(tmp_path):
    target = tmp_path / "schema.yml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target), stdout=StringIO())
    schema = yaml.safe_load(target.read_text())
    paths = set(schema["paths"])
    assert {
        "/api/codex-exec/register",
        "/api/codex-exec/executors/{exe_id}",
        "/api/codex-exec/workspaces/{workspace_id}/executors/{exe_id}",
        "/api/exec-gateway/connected",
        "/api/exec-gateway/revoke-turn",
        "/cloud/environment/{exe_id}/direct/register",
        "/cloud/executor/{exe_id}/register",
    } <= paths
    register = schema["paths"]["/api/codex-exec/register"]["post"]
    assert {"201", "400", "401", "503"} <= set(register["responses"])


def test_schema_is_served(client):
    response = client.get("/api/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    assert response.json()["info"]["title"] == "codexgw"
