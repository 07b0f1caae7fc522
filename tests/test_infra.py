"""infra/: the compose stack and the Kubernetes files, checked with the tools this machine has.

No Docker Compose plugin here, so compose.yaml is checked structurally (start order against health
checks, every secret from infra/.env, image targets) and its Prefect server settings by Prefect's own
multi-worker validation; the Kubernetes manifests against the API schemas (kubernetes-validate).
tests/test_production_stack.py runs a flywheel round on the same Prefect settings.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.local_stack import env_file

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def test_compose_starts_each_service_after_what_it_needs_is_healthy(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, (name, dependency)
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits on {dependency}, which has no health check"
            else:
                assert condition["condition"] == "service_completed_successfully", (name, dependency, condition)
                assert "ports" not in services[dependency], f"{dependency} is a one-shot, not a server"
    for server in ("prefect-server", "mlflow", "postgres", "redis", "minio"):
        assert "healthcheck" in services[server], server
    assert services["worker"]["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert services["prefect-server"]["depends_on"]["prefect-migrate"]["condition"] == "service_completed_successfully"


def test_compose_secrets_come_from_the_env_file_and_images_are_pinned(compose):
    text = (INFRA / "compose.yaml").read_text()
    interpolated = set(re.findall(r"\$\{([A-Z_]+)", text))
    assert interpolated <= set(env_file(INFRA / ".env.example")), interpolated
    assert "lwd-db-secret" not in text and "lwd-minio-secret" not in text, "no password in the compose file"
    assert "infra/.env" in (ROOT / ".gitignore").read_text() and "infra/.env" in (ROOT / ".dockerignore").read_text()
    for name, service in compose["services"].items():
        image = service.get("image", "")
        assert image and not image.endswith(":latest") and ":" in image, (name, image)


def test_the_image_has_cpu_and_cuda_targets_and_never_copies_the_host_environment(compose):
    dockerfile = (INFRA / "Dockerfile").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.MULTILINE))
    assert {"cpu", "cuda"} <= targets
    assert "--extra cuda" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv/" in ignored and ".git/" in ignored
    built = [s["build"] for s in compose["services"].values() if "build" in s]
    assert built and all(b["target"] in targets and (ROOT / b["dockerfile"]).exists() for b in built)


def test_multi_worker_prefect_settings_pass_prefects_own_check(compose):
    """The exact check that made `prefect server start --workers 2` exit before (CAUSAL_ORDERING ...),
    run in a fresh process with the server container's environment."""
    server = compose["services"]["prefect-server"]
    assert "--workers 2" in server["command"] and "--no-services" in server["command"]
    assert compose["services"]["prefect-services"]["command"] == "prefect server services start"
    settings = {**env_file(INFRA / server["env_file"]), **server["environment"]}
    env = {**os.environ, **{k: re.sub(r"\$\{[^}]+\}", "secret", v) for k, v in settings.items()}}
    check = ("import sys\n"
             "from prefect.cli._server_utils import _validate_multi_worker\n"
             "from prefect.settings import get_current_settings\n"
             "assert get_current_settings().server.events.causal_ordering == 'prefect_redis.ordering'\n"
             "_validate_multi_worker(2, lambda message: sys.exit(message))\n")
    checked = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=600)
    assert checked.returncode == 0, checked.stderr[-2000:]


def _job_manifest(variables: dict) -> dict:
    """The job the Prefect Kubernetes worker would submit: the template with its variables filled in
    (the worker splits the command into the container's args)."""
    template = json.loads((INFRA / "k8s" / "base-job-template.json").read_text())
    defaults = {k: v.get("default") for k, v in template["variables"]["properties"].items()}
    values = {**defaults, "name": "lwd-train", "command": ["python", "-m", "prefect.engine"], **variables}
    text = json.dumps(template["job_configuration"]["job_manifest"])
    for key, value in values.items():
        text = text.replace(f'"{{{{ {key} }}}}"', json.dumps(value))
    return json.loads(text)


def test_kubernetes_learner_pods_find_each_other_and_validate_against_the_api_schema():
    import kubernetes_validate

    documents = list(yaml.safe_load_all((INFRA / "k8s" / "learner-service.yaml").read_text()))
    job = _job_manifest({"hosts": 4, "gpus_per_host": 8, "labels": {"lwd/stage": "train"}, "env": {}})
    for document in [*documents, job]:
        kubernetes_validate.validate(document, "1.30", strict=True)
    service = next(d for d in documents if d["kind"] == "Service")
    account = next(d for d in documents if d["kind"] == "ServiceAccount")
    role = next(d for d in documents if d["kind"] == "Role")
    pod = job["spec"]["template"]
    assert service["spec"]["clusterIP"] == "None" and pod["spec"]["subdomain"] == service["metadata"]["name"]
    assert all(pod["metadata"]["labels"].get(k) == v for k, v in service["spec"]["selector"].items())
    assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
    granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert {("pods", "get"), ("jobs", "get"), ("services", "list")} <= granted
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 4
    container = pod["spec"]["containers"][0]
    assert {"name": "LWD_JAX_DISTRIBUTED", "value": "auto"} in container["env"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
