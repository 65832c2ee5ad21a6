"""The Helm chart (deploy/helm/codexgw): it lints, renders and validates against the Kubernetes
schemas (kubernetes-validate, strict) with default values and with every optional feature on, and
its own checks refuse unsafe values."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.conftest import REPO, django_check, documented_variables
from tests.e2e.harness import GatewayProcess

CHART = REPO / "deploy" / "helm" / "codexgw"
# The chart's minimum (Chart.yaml kubeVersion) and the newest kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")
ALL_FEATURES: dict[str, Any] = {
    "ingress": {"enabled": True, "tls": [{"secretName": "gw-tls", "hosts": ["gw.example.com"]}]},
    "gateway": {"autoscaling": {"enabled": True}, "preStopSleepSeconds": 5},
    "metrics": {"enabled": True, "podAnnotations": True, "serviceMonitor": {"enabled": True}},
}


def write_values(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def helm_template(helm: Path, tmp_path: Path, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    command = [str(helm), "template", "gw", str(CHART), "--namespace", "codexgw"]
    if values is not None:
        command += ["--values", str(write_values(tmp_path, values))]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def render(helm: Path, tmp_path: Path, values: dict[str, Any] | None = None) -> tuple[str, list[dict[str, Any]]]:
    result = helm_template(helm, tmp_path, values)
    assert result.returncode == 0, result.stderr
    return result.stdout, [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def validate(tmp_path: Path, manifests: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "manifests.yaml"
    path.write_text(manifests)
    versions = [arg for version in KUBERNETES_VERSIONS for arg in ("-k", version)]
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", *versions, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


# What the kubelet would put for the downward API's ``status.podIP`` (the tests run on one host).
POD_IP = "127.0.0.1"


def container_env(spec: dict[str, Any]) -> dict[str, str]:
    """The container's ``env``, a ``status.podIP`` reference resolved as the kubelet would."""
    environment = {}
    for item in spec.get("env", []):
        if "valueFrom" in item:
            assert item["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}, item
            environment[item["name"]] = POD_IP
        else:
            environment[item["name"]] = str(item["value"])
    return environment


def env_value(spec: dict[str, Any], name: str) -> str:
    values = [item["value"] for item in spec.get("env", []) if item["name"] == name and "value" in item]
    assert len(values) == 1, name
    return str(values[0])


@pytest.mark.parametrize("values", [None, ALL_FEATURES], ids=["defaults", "all-features"])
def test_chart_lints(helm, tmp_path, values):
    command = [str(helm), "lint", "--strict", str(CHART)]
    if values is not None:
        command += ["--values", str(write_values(tmp_path, values))]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_default_render_validates(helm, tmp_path):
    manifests, docs = render(helm, tmp_path)
    result = validate(tmp_path, manifests)
    assert result.returncode == 0, result.stdout + result.stderr
    # --quiet prints only warnings and failures; a missing schema is only a warning, so none may appear.
    assert result.stdout.strip() == "", result.stdout

    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for doc in docs)
    assert kinds == [
        ("ConfigMap", "gw-codexgw"),
        ("ConfigMap", "gw-codexgw-migrate"),
        ("Deployment", "gw-codexgw-beat"),
        ("Deployment", "gw-codexgw-gateway"),
        ("Deployment", "gw-codexgw-worker"),
        ("Job", "gw-codexgw-migrate"),
        ("PodDisruptionBudget", "gw-codexgw-gateway"),
        ("Secret", "gw-codexgw"),
        ("Secret", "gw-codexgw-migrate"),
        ("Service", "gw-codexgw-gateway"),
    ]


def test_gateway_probes_and_drain(helm, tmp_path):
    _, docs = render(helm, tmp_path)
    gateway = find(docs, "Deployment", "gw-codexgw-gateway")
    spec = container(gateway)
    assert spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert spec["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # A Redis or database blip fails readiness only; liveness tolerates a minute of trouble.
    assert spec["livenessProbe"]["failureThreshold"] * spec["livenessProbe"]["periodSeconds"] >= 60
    assert spec["args"] == ["python", "manage.py", "serve"]
    assert env_value(spec, "CODEXGW_DRAIN_TIMEOUT") == "45s"
    assert gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60
    assert gateway["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert "lifecycle" not in spec

    service = find(docs, "Service", "gw-codexgw-gateway")
    assert service["spec"]["selector"] == gateway["spec"]["selector"]["matchLabels"]
    assert find(docs, "ConfigMap", "gw-codexgw")["data"]["CXG_PORT"] == "6060"


def test_celery_processes(helm, tmp_path):
    _, docs = render(helm, tmp_path)
    worker = find(docs, "Deployment", "gw-codexgw-worker")
    assert container(worker)["args"][:4] == ["celery", "-A", "codexgw", "worker"]
    beat = find(docs, "Deployment", "gw-codexgw-beat")
    assert container(beat)["args"][:4] == ["celery", "-A", "codexgw", "beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    # The three workloads' selectors must not overlap, or the Service and PDB would pick up workers.
    selectors = {
        tuple(sorted(find(docs, "Deployment", f"gw-codexgw-{name}")["spec"]["selector"]["matchLabels"].items()))
        for name in ("gateway", "worker", "beat")
    }
    assert len(selectors) == 3


def test_migration_hook_runs_first_with_its_own_config(helm, tmp_path):
    _, docs = render(helm, tmp_path)
    job = find(docs, "Job", "gw-codexgw-migrate")
    assert container(job)["args"] == ["python", "manage.py", "migrate", "--noinput"]
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    env_from = container(job)["envFrom"]
    assert env_from == [
        {"configMapRef": {"name": "gw-codexgw-migrate"}},
        {"secretRef": {"name": "gw-codexgw-migrate"}},
    ]
    for kind in ("ConfigMap", "Secret"):
        copy = find(docs, kind, "gw-codexgw-migrate")["metadata"]["annotations"]
        assert copy["helm.sh/hook"] == annotations["helm.sh/hook"]
        # Created before the Job (lower weight) and replaced on the next upgrade.
        assert int(copy["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
        assert "before-hook-creation" in copy["helm.sh/hook-delete-policy"]
        release = find(docs, kind, "gw-codexgw")
        assert "helm.sh/hook" not in release["metadata"].get("annotations", {})
        assert find(docs, kind, "gw-codexgw-migrate")["data"] == release["data"]


def test_generated_secrets(helm, tmp_path):
    _, docs = render(helm, tmp_path)
    secret = find(docs, "Secret", "gw-codexgw")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    data = {name: base64.b64decode(value).decode() for name, value in secret["data"].items()}
    for name in ("DJANGO_SECRET_KEY", "CODEXGW_TOKEN_ENCRYPTION_KEYS", "CXG_CAPTOKEN_HMAC_SECRET"):
        assert len(data[name]) == 64
    # Empty optional secrets are left out (unset: their routes answer 503), not set to "".
    assert "CXG_INTERNAL_SHARED_SECRET" not in data
    assert "CXG_METRICS_TOKEN" not in data

    _, docs = render(helm, tmp_path, {"secrets": {"DJANGO_SECRET_KEY": "chosen"}})
    chosen = find(docs, "Secret", "gw-codexgw")["data"]["DJANGO_SECRET_KEY"]
    assert base64.b64decode(chosen).decode() == "chosen"


def test_all_features_render_validates(helm, tmp_path):
    manifests, docs = render(helm, tmp_path, ALL_FEATURES)
    result = validate(tmp_path, manifests)
    assert result.returncode == 0, result.stdout + result.stderr
    # kubernetes-validate has no schema for the prometheus-operator CRD; everything else validated.
    warnings = [line for line in result.stdout.splitlines() if line.strip()]
    assert warnings, "the ServiceMonitor was expected to be reported as unvalidated"
    assert all("kind ServiceMonitor with api version monitoring.coreos.com/v1" in line for line in warnings), warnings

    kinds = {doc["kind"] for doc in docs}
    assert {"HorizontalPodAutoscaler", "Ingress", "ServiceMonitor", "PodDisruptionBudget"} <= kinds

    gateway = find(docs, "Deployment", "gw-codexgw-gateway")
    assert "replicas" not in gateway["spec"], "the HPA owns the replica count"
    hpa = find(docs, "HorizontalPodAutoscaler", "gw-codexgw-gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "gw-codexgw-gateway"
    assert container(gateway)["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert gateway["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"

    ingress = find(docs, "Ingress", "gw-codexgw-gateway")
    assert int(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "gw-codexgw-gateway", "port": {"name": "http"}}

    monitor = find(docs, "ServiceMonitor", "gw-codexgw-gateway")
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["path"] == "/metrics"
    assert endpoint["bearerTokenSecret"] == {"name": "gw-codexgw", "key": "CXG_METRICS_TOKEN"}
    assert "CXG_METRICS_TOKEN" in find(docs, "Secret", "gw-codexgw")["data"]


def test_validator_rejects_an_unknown_field(helm, tmp_path):
    """Strict validation is real: the same output with one misspelt field fails."""
    _, docs = render(helm, tmp_path)
    container(find(docs, "Deployment", "gw-codexgw-gateway"))["readinesProbe"] = {"periodSeconds": 5}
    result = validate(tmp_path, yaml.safe_dump_all(docs))
    assert result.returncode != 0
    assert "readinesProbe" in result.stdout


def test_existing_secret(helm, tmp_path):
    _, docs = render(helm, tmp_path, {"existingSecret": "mine", **ALL_FEATURES})
    assert not [doc for doc in docs if doc["kind"] == "Secret"]
    for name in ("gateway", "worker", "beat"):
        env_from = container(find(docs, "Deployment", f"gw-codexgw-{name}"))["envFrom"]
        assert {"secretRef": {"name": "mine"}} in env_from
    assert {"secretRef": {"name": "mine"}} in container(find(docs, "Job", "gw-codexgw-migrate"))["envFrom"]
    monitor = find(docs, "ServiceMonitor", "gw-codexgw-gateway")
    assert monitor["spec"]["endpoints"][0]["bearerTokenSecret"]["name"] == "mine"


def test_migrations_can_be_turned_off(helm, tmp_path):
    _, docs = render(helm, tmp_path, {"migrations": {"enabled": False}})
    assert not [doc for doc in docs if "helm.sh/hook" in doc["metadata"].get("annotations", {})]


@pytest.mark.parametrize(
    ("gateway", "message"),
    [
        ({"terminationGracePeriodSeconds": 45, "drainTimeoutSeconds": 45}, "must exceed"),
        ({"terminationGracePeriodSeconds": 60, "drainTimeoutSeconds": 45, "preStopSleepSeconds": 15}, "must exceed"),
        ({"drainTimeoutSeconds": 10, "drainReadinessDelaySeconds": 10}, "must be below"),
    ],
)
def test_refuses_a_grace_period_shorter_than_the_drain(helm, tmp_path, gateway, message):
    result = helm_template(helm, tmp_path, {"gateway": gateway})
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"CXG_INTERNAL_SHARED_SECRET": "oops"}, "config.CXG_INTERNAL_SHARED_SECRET is a secret"),
        # The container's own env would silently win over the ConfigMap.
        ({"CODEXGW_DRAIN_TIMEOUT": "90s"}, "config.CODEXGW_DRAIN_TIMEOUT is derived from gateway.drainTimeoutSeconds"),
    ],
)
def test_refuses_misplaced_config(helm, tmp_path, config, message):
    result = helm_template(helm, tmp_path, {"config": config})
    assert result.returncode != 0
    assert message in result.stderr


def test_every_variable_the_chart_sets_is_documented(helm, tmp_path):
    _, docs = render(helm, tmp_path, ALL_FEATURES)
    names = set(find(docs, "ConfigMap", "gw-codexgw")["data"]) | set(find(docs, "Secret", "gw-codexgw")["data"])
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            names |= {item["name"] for item in container(doc).get("env", [])}
    names.discard("HOME")  # the process's home directory, not a codexgw setting
    assert "CODEXGW_DRAIN_TIMEOUT" in names
    assert sorted(names - documented_variables()) == []


@pytest.mark.parametrize(("kind", "name"), [("Deployment", "gw-codexgw-gateway"), ("Job", "gw-codexgw-migrate")])
def test_the_rendered_environment_starts_django(helm, tmp_path, kind, name):
    _, docs = render(helm, tmp_path)
    spec = container(find(docs, kind, name))
    environment: dict[str, str] = {}
    for source in spec["envFrom"]:
        if "configMapRef" in source:
            environment |= find(docs, "ConfigMap", source["configMapRef"]["name"])["data"]
        else:
            data = find(docs, "Secret", source["secretRef"]["name"])["data"]
            environment |= {key: base64.b64decode(value).decode() for key, value in data.items()}
    environment |= container_env(spec)
    report = django_check(environment, tmp_path)
    assert "security.W009" not in report, "the generated DJANGO_SECRET_KEY is too weak for Django"


def test_a_gateway_serves_and_drains_with_the_rendered_environment(helm, tmp_path, transactional_db):
    """The gateway container's environment, on this machine's PostgreSQL and Redis (the harness
    supplies their addresses): it becomes ready, and on SIGTERM it drains and exits by itself within
    the pod's termination grace period."""
    _, docs = render(helm, tmp_path)
    gateway = find(docs, "Deployment", "gw-codexgw-gateway")
    spec = container(gateway)
    environment = find(docs, "ConfigMap", "gw-codexgw")["data"] | {
        key: base64.b64decode(value).decode() for key, value in find(docs, "Secret", "gw-codexgw")["data"].items()
    }
    environment |= container_env(spec)
    for infrastructure in ("DATABASE_URL", "REDIS_URL"):
        del environment[infrastructure]
    environment |= {"CODEXGW_DATA_DIR": str(tmp_path / "data"), "CXG_TMP_ROOT": str(tmp_path / "codex")}
    environment["HOME"] = str(tmp_path)

    process = GatewayProcess.start(env=environment)
    try:
        for path in ("/healthz", "/readyz"):
            assert httpx.get(process.base_url + path, timeout=10).status_code == 200, process.log()
    finally:
        code = process.terminate(timeout=gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
    assert code == 0, process.log()
