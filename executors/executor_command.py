"""What an operator runs on an executor machine to connect it to this gateway.

``codex exec-server --aws-sigv4`` reads its credentials from the standard AWS variables: the
executor id is the access key id and the registration token the secret key.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpRequest

# The SigV4 signer needs some region; the gateway's verifier accepts any.
AWS_REGION = "us-east-1"
CODEX_PACKAGE = "@openai/codex"


@dataclass(frozen=True)
class ExecutorLaunch:
    env: dict[str, str]
    argv: list[str]

    @property
    def command(self) -> str:
        """One shell command: the environment assignments, then ``codex exec-server ...``."""
        assignments = " ".join(f"{name}={shlex.quote(value)}" for name, value in self.env.items())
        return f"{assignments} \\\n  {self.exec_command}"

    @property
    def exec_command(self) -> str:
        """``codex exec-server ...`` alone, for when the environment comes from a file."""
        return shlex.join(self.argv)

    @property
    def env_file(self) -> str:
        """The same environment as a ``KEY=value`` file (systemd ``EnvironmentFile=``, ``set -a; .``)."""
        return "".join(f"{name}={shlex.quote(value)}\n" for name, value in self.env.items())


def public_base_url(request: HttpRequest) -> str:
    """The gateway's public http(s) base: configured, else the one the admin was reached at."""
    base = settings.CXG_PUBLIC_HTTPS_BASE_URL or request.build_absolute_uri("/")
    return base.rstrip("/")


def public_ws_base_url(request: HttpRequest) -> str:
    """The gateway's public ws(s) base: configured, else the one the admin was reached at."""
    base = settings.CXG_PUBLIC_WS_BASE_URL or f"{'wss' if request.is_secure() else 'ws'}://{request.get_host()}"
    return base.rstrip("/")


def executor_launch(exe_id: str, token: str, base_url: str) -> ExecutorLaunch:
    return ExecutorLaunch(
        env={"AWS_ACCESS_KEY_ID": exe_id, "AWS_SECRET_ACCESS_KEY": token, "AWS_REGION": AWS_REGION},
        argv=[
            "codex",
            "exec-server",
            "--remote",
            base_url,
            "--remote-transport",
            "direct",
            "--aws-sigv4",
            "--environment-id",
            exe_id,
            "--concurrent-requests",
            str(settings.CXG_EXECUTOR_CONCURRENT_REQUESTS),
        ],
    )


def codex_install_command() -> str:
    """How to get codex onto an executor machine: the version this gateway pins (package.json;
    the one its tests run) when the checkout has it."""
    try:
        pinned = json.loads((settings.BASE_DIR / "package.json").read_text())["dependencies"][CODEX_PACKAGE]
    except (OSError, ValueError, KeyError, TypeError):
        return f"npm install -g {CODEX_PACKAGE}"
    return f"npm install -g {CODEX_PACKAGE}@{pinned}"
