"""The deployment files agree with the service and with each other (no container needed).

`make image-test` (tests/test_image.py) builds and runs the image; `make deploy-check`
runs checkov over the manifests. These tests pin what neither of those sees: the probes
point at the listeners the service really has, the worker's grace period fits its job
timeout, resource requests come from the benchmark's figures, only the receiver is
published, and secrets are referenced, never written down.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from webhook_worker.config import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy/kubernetes"
# Design rate one pod is sized for (docs/deployment.md "Resources").
EVENTS_PER_SECOND_PER_POD = 1000
SECRET_VARIABLES = {
    "STRIPE_WEBHOOK_SECRET",
    "DATABASE_URL",
    "DIRECT_DATABASE_URL",
    "REDIS_URL",
    "OPS_TOKEN",
    "STRIPE_API_KEY",
}


def _manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [m for m in _manifests() if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _container(kind: str, name: str) -> dict[str, Any]:
    containers = _one(kind, name)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _port(container: dict[str, Any], name: str) -> int:
    return int(next(p["containerPort"] for p in container["ports"] if p["name"] == name))


def _config() -> dict[str, str]:
    data: dict[str, str] = _one("ConfigMap", "webhook-worker-config")["data"]
    return data


def _cpu_millicores(value: str) -> int:
    return int(value[:-1]) if value.endswith("m") else int(float(value) * 1000)


def _mebibytes(value: str) -> int:
    assert value.endswith("Mi"), value
    return int(value[:-2])


def _benchmark() -> dict[str, Any]:
    results: dict[str, Any] = json.loads((ROOT / "benchmarks/results.json").read_text())
    return results


WORKLOADS = [
    ("Deployment", "webhook-receiver"),
    ("Deployment", "webhook-worker"),
    ("Deployment", "webhook-console"),
    ("Job", "webhook-worker-migrate"),
]


def test_the_configmap_is_a_valid_configuration() -> None:
    env = {**_config(), "DATABASE_URL": "postgresql://h/db", "REDIS_URL": "redis://h:6379/0"}
    settings = Settings.from_env(env)
    assert settings.metrics_port == 9091
    assert settings.metrics_host == "0.0.0.0"


def test_receiver_probes_use_the_internal_listener_and_the_public_healthz() -> None:
    receiver = _container("Deployment", "webhook-receiver")
    metrics_port = int(_config()["METRICS_PORT"])
    assert _port(receiver, "metrics") == metrics_port
    ready = receiver["readinessProbe"]["httpGet"]
    assert (ready["path"], _port(receiver, ready["port"])) == ("/readyz", metrics_port)
    alive = receiver["livenessProbe"]["httpGet"]
    assert alive["path"] == "/healthz"
    assert _port(receiver, alive["port"]) == 8000  # `serve`'s PORT in the image
    assert receiver["args"] == ["serve"]


def test_receiver_has_a_disruption_budget_and_spare_replicas() -> None:
    deployment = _one("Deployment", "webhook-receiver")
    budget = _one("PodDisruptionBudget", "webhook-receiver")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = budget["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert deployment["spec"]["replicas"] > budget["spec"]["minAvailable"] >= 1


def test_worker_grace_period_fits_its_job_timeout() -> None:
    spec = _one("Deployment", "webhook-worker")["spec"]["template"]["spec"]
    job_timeout = int(_config()["JOB_TIMEOUT_SECONDS"])
    assert spec["terminationGracePeriodSeconds"] == job_timeout + 15
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert compose["services"]["worker"]["stop_grace_period"] == f"{job_timeout + 15}s"
    worker = _container("Deployment", "webhook-worker")
    assert worker["args"] == ["work"]
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert _port(worker, worker["readinessProbe"]["httpGet"]["port"]) == 9091


def test_migration_job_uses_the_direct_url() -> None:
    job = _container("Job", "webhook-worker-migrate")
    assert job["args"] == ["migrate", "up"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in job["env"]}
    # DATABASE_URL too, so the migration is direct whichever variable the release reads.
    assert refs == {
        "DIRECT_DATABASE_URL": "direct-database-url",
        "DATABASE_URL": "direct-database-url",
    }


def test_console_is_reachable_inside_the_cluster_only() -> None:
    service = _one("Service", "webhook-console")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    for manifest in _manifests():
        assert manifest["kind"] != "Ingress"
        if manifest["kind"] == "Service":
            assert manifest["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_network_policy_denies_by_default_and_opens_the_internal_port_to_monitoring() -> None:
    deny = _one("NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    metrics = _one("NetworkPolicy", "metrics-from-monitoring")["spec"]
    assert [p["port"] for rule in metrics["ingress"] for p in rule["ports"]] == [9091]
    public = _one("NetworkPolicy", "receiver-from-ingress")["spec"]
    assert [p["port"] for rule in public["ingress"] for p in rule["ports"]] == [8000]


def test_metrics_are_announced_on_the_internal_port() -> None:
    for name in ("webhook-receiver", "webhook-worker"):
        annotations = _one("Deployment", name)["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == _config()["METRICS_PORT"]
        assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize(("kind", "name"), WORKLOADS)
def test_workloads_run_locked_down_with_secrets_by_reference(kind: str, name: str) -> None:
    pod = _one(kind, name)["spec"]["template"]["spec"]
    container = _container(kind, name)
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == _dockerfile_uid()
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    for variable in container.get("env", []):
        if variable["name"] in SECRET_VARIABLES:
            assert "value" not in variable
            assert variable["valueFrom"]["secretKeyRef"]["name"] == "webhook-worker"
    assert container["envFrom"] == [{"configMapRef": {"name": "webhook-worker-config"}}]
    assert not SECRET_VARIABLES & set(_config())
    assert all(m["kind"] != "Secret" for m in _manifests())


@pytest.mark.parametrize(
    ("name", "rss_key", "cpu_us"),
    [
        # the receiver's CPU per webhook at 32 connections (the costlier of its best points)
        (
            "webhook-receiver",
            "receiver_rss_mb",
            lambda b: b["ingest"]["points"][2]["cpu_us_per_event_by_role"]["receiver"],
        ),
        # the workers' CPU per credited event, the costlier of one hot user and many users
        (
            "webhook-worker",
            "worker_rss_mb",
            lambda b: max(
                b["credit"]["cpu_us_per_event_by_role_hot"]["workers"],
                b["credit"]["cpu_us_per_event_by_role_random"]["workers"],
            ),
        ),
    ],
)
def test_resource_requests_come_from_the_benchmark(name: str, rss_key: str, cpu_us: Any) -> None:
    bench = _benchmark()
    resources = _container("Deployment", name)["resources"]
    requests, limits = resources["requests"], resources["limits"]
    # CPU: the design rate at the measured cost per event, rounded up to 50m, no more.
    needed = cpu_us(bench) * EVENTS_PER_SECOND_PER_POD / 1000
    assert _cpu_millicores(requests["cpu"]) == 50 * math.ceil(needed / 50)
    # one Python process never uses more than a core: a limit of 1 never throttles below it
    assert _cpu_millicores(limits["cpu"]) == 1000
    # memory: the measured RSS (MB) with headroom, and a limit above the benchmark's target
    rss_mib = bench[rss_key] * 1e6 / 2**20
    assert rss_mib * 1.25 <= _mebibytes(requests["memory"]) <= rss_mib * 2
    assert _mebibytes(limits["memory"]) >= 150 * 1e6 / 2**20


def _dockerfile_uid() -> int:
    match = re.search(r"^ARG APP_UID=(\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert match
    return int(match.group(1))


def test_dockerfile_builds_wheels_then_a_lean_non_root_runtime() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert [s.split()[0] for s in stages] == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim-\w+$", text, re.M)
    build, runtime = stages
    assert "pip wheel" in build and "requirements.lock" in build
    assert not re.search(r"gcc|build-essential|apt-get|pip install", runtime)
    assert re.search(r"^USER \$\{APP_UID\}", runtime, re.M) and _dockerfile_uid() >= 10000
    assert 'ENTRYPOINT ["webhook-worker"]' in runtime
    assert re.search(r"^HEALTHCHECK .*healthcheck\.py", runtime, re.M | re.S)
    assert "/healthz" in (ROOT / "deploy/container/healthcheck.py").read_text()


def test_dockerignore_keeps_local_state_and_tests_out() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"  # allow-list: anything not named is left out
    for kept_out in (".data", ".venv", "tests"):
        assert f"**/{kept_out}/" in patterns
        assert not any(p.startswith(f"!{kept_out}") for p in patterns)


def test_compose_publishes_only_the_receiver_and_keeps_secrets_in_the_env_file() -> None:
    text = (ROOT / "compose.yaml").read_text()
    services = yaml.safe_load(text)["services"]
    assert {n for n, s in services.items() if "ports" in s} == {"receiver"}
    assert set(services) == {"postgres", "redis", "migrate", "receiver", "worker", "console"}
    for service in services.values():
        assert "private" in service["networks"]
    assert yaml.safe_load(text)["networks"]["private"]["internal"] is True
    assert "--requirepass" in " ".join(services["redis"]["command"])
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate", "up"] and migrate["restart"] == "no"
    assert migrate["environment"]["DIRECT_DATABASE_URL"].endswith("@postgres:5432/webhook")
    for name in ("receiver", "worker", "console"):
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}
        assert services[name]["read_only"] is True
    # every variable without a default comes from the env file, so the example names it
    required = set(re.findall(r"\$\{(\w+)(?::\?[^}]*)?\}", text))
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert required <= set(example), required - set(example)
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "STRIPE_WEBHOOK_SECRET", "OPS_TOKEN"} <= required
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?message}`, from the env file."""

    def one(match: re.Match[str]) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3)
        if name in env and (env[name] or op != ":-"):
            return env[name]
        assert op == ":-", f"{name} is not in .env.example"
        return rest

    return re.sub(r"\$\{(\w+)(:[-?])?([^}]*)\}", one, value)


@pytest.mark.parametrize("service", ["migrate", "receiver", "worker", "console"])
def test_compose_with_the_example_env_is_a_valid_configuration(service: str) -> None:
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    environment = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"][service][
        "environment"
    ]
    env = {k: _interpolate(str(v), example) for k, v in environment.items()}
    settings = Settings.from_env(env)
    assert settings.require_database().startswith("postgresql://webhook:")
    if service == "receiver":
        settings.require_receiver()
