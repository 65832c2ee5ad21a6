"""CODEX_HOME archives in S3, configured only from the CXG_S3_* variables.

The store is moto's standalone S3-compatible server on 127.0.0.1 (a real HTTP server, as the
fake model is for the LLM); the gateway side runs in a subprocess so that ``settings.py`` builds
``STORAGES`` from the environment exactly as in production.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import boto3  # type: ignore[import-untyped]  # boto3 ships no type information
import pytest
from moto.server import ThreadedMotoServer

from tests.e2e.harness import REPO, gateway_env

BUCKET = "codexgw-homes"

_GATEWAY_SIDE = """
import json, sys
from pathlib import Path
import django
django.setup()
from django.conf import settings
from appgateway import persistence

home, fresh = Path(sys.argv[1]), Path(sys.argv[2])
persistence.persist("ws-s3", home)
(home / "sessions" / "rollout.jsonl").write_text("second version")
persistence.persist("ws-s3", home)
result = persistence.restore("ws-s3", fresh)
print(json.dumps({
    "backend": settings.STORAGES["codexhome"]["BACKEND"],
    "extracted": result.extracted,
    "missing": persistence.restore("ws-none", fresh) is None,
}))
"""


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def test_persist_and_restore_through_s3(s3_endpoint, tmp_path: Path):
    credentials = {"aws_access_key_id": "test-key-id", "aws_secret_access_key": "test-secret"}
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="eu-west-1", **credentials)
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    home = tmp_path / "home"
    (home / "sessions").mkdir(parents=True)
    (home / "sessions" / "rollout.jsonl").write_text("first version")
    (home / "config.toml").write_text("secret")
    fresh = tmp_path / "fresh"
    fresh.mkdir()

    env = gateway_env(
        {
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "CXG_S3_BUCKET": BUCKET,
            "CXG_S3_ENDPOINT": s3_endpoint,
            "CXG_S3_REGION": "eu-west-1",
            "CXG_S3_ACCESS_KEY_ID": credentials["aws_access_key_id"],
            "CXG_S3_SECRET_ACCESS_KEY": credentials["aws_secret_access_key"],
            "CXG_S3_PATH_STYLE": "true",  # virtual-host addressing cannot work against 127.0.0.1
        }
    )
    run = subprocess.run(
        [sys.executable, "-c", _GATEWAY_SIDE, str(home), str(fresh)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert outcome == {"backend": "storages.backends.s3.S3Storage", "extracted": 2, "missing": True}
    assert (fresh / "sessions" / "rollout.jsonl").read_text() == "second version"
    assert not (fresh / "config.toml").exists()

    keys = [item["Key"] for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert keys == ["codex-app-gateway/ws-s3.tar.gz"]  # the Go gateway's key; nothing partial left
    body = client.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as archive:
        assert sorted(archive.getnames()) == ["sessions", "sessions/rollout.jsonl"]
