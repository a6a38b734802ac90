"""``infra/k8s`` checked offline: every built-in object validates against the Kubernetes schemas
bundled in ``kubernetes-validate`` (strict: unknown fields are errors), the RayCluster against the
KubeRay CRD's schema (``raycluster_v1.schema.json``) with its pod templates against Kubernetes'
own, and the API's settings, the Ray head's address and the hardware targets agree."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from infra_files import K8S, REPO, manifests, settings_env_names

from detrforge.api.main import job_env
from detrforge.platform.settings import Settings

# The oldest Kubernetes minor the manifests target (a field newer than this fails validation).
KUBERNETES_VERSION = "1.31"
RAYCLUSTER_SCHEMA = Path(__file__).with_name("raycluster_v1.schema.json")


def _objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in manifests() if doc["kind"] == kind]


def _one(kind: str) -> dict[str, Any]:
    (found,) = _objects(kind)
    return found


def _validate_builtin(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _validate_raycluster(doc: dict[str, Any]) -> None:
    schema = json.loads(RAYCLUSTER_SCHEMA.read_text())
    jsonschema.Draft202012Validator(schema).validate(doc)
    spec = doc["spec"]
    for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
        # KubeRay builds each pod from a core/v1 PodTemplateSpec: validate it as one.
        _validate_builtin(
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": group.get("groupName", "head")},
                "template": group["template"],
            }
        )


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers of a Deployment or a Ray group (both hold a pod template)."""
    containers: list[dict[str, Any]] = group["template"]["spec"]["containers"]
    return containers


def _worker(rc: dict[str, Any]) -> dict[str, Any]:
    worker: dict[str, Any] = rc["spec"]["workerGroupSpecs"][0]
    return worker


def _ray_resources(value: str) -> dict[str, float]:
    """A ``rayStartParams.resources`` value read as KubeRay reads it (quotes trimmed, JSON)."""
    parsed: dict[str, float] = json.loads(value.strip("'\"` "))
    return parsed


@pytest.mark.parametrize(
    ("file", "kind"),
    [(file, doc["kind"]) for file, doc in manifests() if doc["kind"] != "RayCluster"],
)
def test_builtin_objects_validate_against_the_kubernetes_schema(file: str, kind: str) -> None:
    for doc in (d for f, d in manifests() if f == file and d["kind"] == kind):
        _validate_builtin(doc)


def test_the_raycluster_validates_against_the_crd_schema() -> None:
    _validate_raycluster(_one("RayCluster"))


# Each breaks the cluster the way KubeRay or the API server would refuse it.
BREAKAGES: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "missing-group-name": (lambda rc: _worker(rc).pop("groupName"), "'groupName' is a required"),
    "int-start-param": (
        lambda rc: rc["spec"]["headGroupSpec"]["rayStartParams"].update(port=6390),
        "6390 is not of type 'string'",
    ),
    "unknown-field": (
        lambda rc: rc["spec"].update(workerGroups=[]),
        "'workerGroups' was unexpected",
    ),
    "negative-max": (lambda rc: _worker(rc).update(maxReplicas=-1), "-1 is less than"),
    "pod-typo": (
        lambda rc: _containers(_worker(rc))[0].update(imagePullPolcy="Always"),
        "'imagePullPolcy' was unexpected",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_the_raycluster_check_refuses_broken_clusters(breakage: str) -> None:
    change, error = BREAKAGES[breakage]
    broken = copy.deepcopy(_one("RayCluster"))
    change(broken)
    with pytest.raises(jsonschema.ValidationError, match=error):
        _validate_raycluster(broken)


def test_the_ray_version_is_the_one_pinned_in_pyproject() -> None:
    pinned = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray,) = (re.fullmatch(r"ray\[[^]]*\]==(\S+)", dep) for dep in pinned if dep.startswith("ray["))
    assert ray is not None
    assert _one("RayCluster")["spec"]["rayVersion"] == ray[1]


def test_the_head_is_cpu_only_and_the_gpu_group_names_its_hardware_target() -> None:
    spec = _one("RayCluster")["spec"]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    gcs_port = head["rayStartParams"]["port"]
    assert gcs_port != "6379"
    head_ports = {port["name"]: port["containerPort"] for port in _containers(head)[0]["ports"]}
    assert head_ports["gcs-server"] == int(gcs_port)
    (group,) = spec["workerGroupSpecs"]
    assert _ray_resources(group["rayStartParams"]["resources"]) == {"hw_a10g": 1}
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    container = _containers(group)[0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith("-cu130")


def test_the_api_reads_only_real_settings_from_its_configmap_and_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    deployment = _one("Deployment")
    container = _containers(deployment["spec"])[0]
    sources = {
        next(iter(source)): next(iter(source.values()))["name"] for source in container["envFrom"]
    }
    config = {doc["metadata"]["name"]: doc["data"] for doc in _objects("ConfigMap")}
    secret = {doc["metadata"]["name"]: doc["stringData"] for doc in _objects("Secret")}
    environment = {**config[sources["configMapRef"]], **secret[sources["secretRef"]]}
    known = settings_env_names()
    unknown = sorted(n for n in environment if n.startswith("DETRFORGE_") and n not in known)
    assert not unknown, f"not a field of Settings (it would be ignored): {unknown}"

    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    cluster = _one("RayCluster")["metadata"]["name"]
    # KubeRay names the head's Service <cluster>-head-svc; the Jobs API is the dashboard port.
    assert settings.resolved_ray_address() == f"http://{cluster}-head-svc:8265"
    assert settings.resolved_database_url().startswith("postgresql://")
    assert settings.resolved_artifact_root().startswith("s3://")
    assert settings.resolved_tracking_uri().startswith("http://")
    assert (settings.host, settings.port) == ("0.0.0.0", 8321)
    assert container["ports"] == [{"name": "http", "containerPort": settings.port}]
    # The credentials in the Secret reach every job the API submits.
    monkeypatch.setenv("DETRFORGE_HOME", str(tmp_path))
    forwarded = job_env(Settings())
    aws = {name: value for name, value in environment.items() if name.startswith("AWS_")}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(aws)
    assert {name: forwarded.get(name) for name in aws} == aws


def test_the_api_probes_service_and_network_policy_match_the_pods() -> None:
    deployment, service = _one("Deployment"), _one("Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    container = _containers(deployment["spec"])[0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # One replica until replicas share promotions safely; never two during a rollout.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    policy = _one("NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "ray.io/cluster": _one("RayCluster")["metadata"]["name"]
    }
    api_rule = policy["spec"]["ingress"][1]
    assert api_rule["from"][0]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert api_rule["ports"] == [{"protocol": "TCP", "port": 8265}]


def test_kustomization_applies_every_manifest_but_the_secret_template() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {path.name for path in K8S.glob("*.yaml")}
    assert set(kustomization["resources"]) == files - {"kustomization.yaml", "secret.example.yaml"}
    namespace = kustomization["namespace"]
    assert all(doc["metadata"].get("namespace", namespace) == namespace for _, doc in manifests())
    # kustomize's `images` rewrites every container image named `detrforge`.
    (image,) = kustomization["images"]
    spec = _one("RayCluster")["spec"]
    groups = [d["spec"] for d in _objects("Deployment")]
    groups += [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    containers = [container for group in groups for container in _containers(group)]
    assert {c["image"].split(":")[0] for c in containers} == {image["name"]}
