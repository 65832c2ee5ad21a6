"""The codex version and OS on an executor's row come from what its exec-server reports in its
``initialize`` answer (codex sends no User-Agent); the real executor is in
``tests/e2e/test_executor_registration.py``."""

from __future__ import annotations

from typing import Any

import pytest

from executors import services
from executors.models import Executor

pytestmark = pytest.mark.django_db

# environmentInfo as codex exec-server 0.171.0 answers initialize (codex-wire §A.1), abridged.
ENVIRONMENT_INFO = {
    "shell": {"name": "bash", "path": "/bin/bash"},
    "executorVersion": "0.171.0",
    "cwd": "file:///home/user",
    "platformOs": "linux",
    "capabilities": {"credentialMasking": True},
}


def row(exe_id: str) -> Executor:
    return Executor.objects.get(exe_id=exe_id)


def test_the_reported_version_and_os_are_recorded() -> None:
    exe_id = services.register_executor("user-v").executor.exe_id

    services.record_environment(exe_id, ENVIRONMENT_INFO)

    assert (row(exe_id).codex_version, row(exe_id).client_os) == ("0.171.0", "linux")


@pytest.mark.parametrize(
    "info",
    [{}, {"executorVersion": None, "platformOs": 7}, {"executorVersion": "", "platformOs": ""}],
)
def test_an_answer_without_them_keeps_what_was_recorded(info: dict[str, Any]) -> None:
    exe_id = services.register_executor("user-v").executor.exe_id
    services.record_environment(exe_id, ENVIRONMENT_INFO)

    services.record_environment(exe_id, info)

    assert (row(exe_id).codex_version, row(exe_id).client_os) == ("0.171.0", "linux")


def test_a_connection_without_user_agent_keeps_the_reported_version() -> None:
    exe_id = services.register_executor("user-v").executor.exe_id
    services.record_environment(exe_id, ENVIRONMENT_INFO)

    # What a reconnecting codex sends: no User-Agent header.
    services.record_connected(exe_id, services.client_meta({}, "192.0.2.1"))

    executor = row(exe_id)
    assert (executor.client_ip, executor.client_ua) == ("192.0.2.1", "")
    assert (executor.codex_version, executor.client_os) == ("0.171.0", "linux")


def test_over_long_values_are_cut_to_the_columns() -> None:
    exe_id = services.register_executor("user-v").executor.exe_id

    services.record_environment(exe_id, {"executorVersion": "9" * 100, "platformOs": "x" * 300})

    assert (len(row(exe_id).codex_version), len(row(exe_id).client_os)) == (64, 255)
