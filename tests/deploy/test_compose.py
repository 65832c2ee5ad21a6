"""The compose stack (deploy/compose.yaml, deploy/haproxy.cfg) parses and is consistent: every
variable it sets is documented, both gateways sit behind the balancer, every long-running service
has a healthcheck. (docker compose itself cannot run here: no container engine.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from codexgw.env import parse_duration
from tests.deploy.conftest import REPO, django_check, documented_variables

DEPLOY = REPO / "deploy"
GATEWAYS = ("gateway-1", "gateway-2")
CODEXGW_SERVICES = ("migrate", *GATEWAYS, "worker", "beat")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


@pytest.fixture(scope="module")
def haproxy() -> str:
    return (DEPLOY / "haproxy.cfg").read_text()


def test_services(services):
    assert set(services) == {"postgres", "redis", "balancer", *CODEXGW_SERVICES}
    for name in CODEXGW_SERVICES:
        assert services[name]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert (DEPLOY / services[name]["build"]["context"] / services[name]["build"]["dockerfile"]).is_file()
    beats = [name for name, service in services.items() if "beat" in service.get("command", [])]
    assert beats == ["beat"], "exactly one Celery beat"
    assert services["migrate"]["command"] == ["python", "manage.py", "migrate", "--noinput"]
    assert services["migrate"]["restart"] == "no"


def test_every_variable_is_documented(services):
    documented = documented_variables()
    for name in CODEXGW_SERVICES:
        environment = services[name]["environment"]
        assert isinstance(environment, dict)
        assert "DATABASE_URL" in environment
        assert "REDIS_URL" in environment
        assert sorted(set(environment) - documented) == [], name


def test_processes_start_after_migrations(services):
    for name in (*GATEWAYS, "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["redis"] == {"condition": "service_healthy"}, name
    assert services["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}


def test_healthchecks(services):
    # migrate exits when done; beat answers no pings (see compose.yaml).
    for name in set(services) - {"migrate", "beat"}:
        assert services[name]["healthcheck"]["test"], name
    for name in GATEWAYS:
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"])


def test_gateways_drain_within_the_stop_grace_period(services):
    for name in GATEWAYS:
        drain = parse_duration(services[name]["environment"]["CODEXGW_DRAIN_TIMEOUT"])
        assert parse_duration(services[name]["stop_grace_period"]) > drain, name


def test_both_gateways_are_behind_the_balancer(services, haproxy):
    balancer = services["balancer"]
    assert balancer["image"].startswith("haproxy:")
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in balancer["volumes"]
    assert balancer["ports"] == ["6060:6060"]
    assert set(balancer["depends_on"]) == set(GATEWAYS)
    port = services["gateway-1"]["environment"]["CXG_PORT"]
    servers = re.findall(r"^\s*server\s+(\S+)\s+(\S+)", haproxy, flags=re.MULTILINE)
    assert sorted(servers) == [(name, f"{name}:{port}") for name in GATEWAYS]


def test_haproxy_accepts_the_config():
    """Debian's haproxy (scripts/test installs it for the e2e balancer) parses the file; the gateway
    names resolve only inside compose, so it reports those servers as disabled, not as errors."""
    haproxy = shutil.which("haproxy")
    assert haproxy, "haproxy not found on PATH: scripts/test installs it (Debian package haproxy)"
    result = subprocess.run(
        [haproxy, "-c", "-f", str(DEPLOY / "haproxy.cfg")], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "directive",
    [
        r"balance\s+roundrobin",
        r"option\s+httpchk",
        r"http-check\s+send\s+meth\s+GET\s+uri\s+/readyz",
        r"http-check\s+expect\s+status\s+200",
        r"timeout\s+tunnel\s+1h",
        r"bind\s+:6060",
    ],
)
def test_haproxy_directives(haproxy, directive):
    lines = [line.split("#", 1)[0] for line in haproxy.splitlines()]
    assert any(re.fullmatch(rf"\s*{directive}\s*", line) for line in lines)


@pytest.mark.parametrize("name", ["gateway-1", "migrate"])
def test_the_environment_starts_django(services, tmp_path, name):
    # Compose's own interpolation of ${NAME:-default}, with nothing set: the defaults apply.
    environment = {
        key: re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))
        for key, value in services[name]["environment"].items()
    }
    assert not [value for value in environment.values() if "$" in value]
    django_check(environment, tmp_path)
