"""``infra/compose.yaml`` checked without Docker: it parses, every service that stays up has a
health check, the environment names it gives detrforge are names detrforge reads (derived from
the settings model), and the parts agree with each other (ports, addresses, hardware targets)."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from infra_files import (
    INFRA,
    compose,
    compose_environment,
    compose_variables,
    env_example,
    manifests,
    settings_env_names,
)

from detrforge.api.main import job_env
from detrforge.platform.settings import Settings

EXPECTED_SERVICES = {
    "postgres",
    "minio",
    "s3-init",
    "mlflow",
    "ray-head",
    "ray-worker",
    "ray-worker-gpu",
    "api",
}


def _flag(command: list[str], name: str) -> str:
    """The value of ``--name=value`` in a command given as a list."""
    values = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"--{name}=")]
    assert len(values) == 1, f"expected one --{name}= in {command}"
    return values[0]


def test_compose_parses_with_the_services_and_named_volumes() -> None:
    spec = compose()
    assert set(spec["services"]) == EXPECTED_SERVICES
    declared = set(spec["volumes"])
    assert declared == {"postgres-data", "s3-data", "api-home", "datasets"}
    used = {
        mount.split(":", 1)[0]
        for service in spec["services"].values()
        for mount in service.get("volumes", [])
        if not mount.startswith((".", "/"))
    }
    assert used == declared


def test_every_service_that_stays_up_has_a_healthcheck() -> None:
    services = compose()["services"]
    one_shot = {name for name, service in services.items() if service.get("restart") == "no"}
    assert one_shot == {"s3-init"}
    for name, service in services.items():
        if name in one_shot:
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            wanted = (
                "service_completed_successfully" if dependency in one_shot else "service_healthy"
            )
            assert rule["condition"] == wanted, f"{name} -> {dependency}: {rule}"


def test_detrforge_names_in_the_compose_file_are_settings_fields() -> None:
    known = settings_env_names()
    used = {
        (service_name, env_name)
        for service_name, service in compose()["services"].items()
        for env_name in compose_environment(service)
    }
    unknown = sorted(
        f"{service}: {name}"
        for service, name in used
        if name.startswith("DETRFORGE_") and name not in known
    )
    assert not unknown, f"not a field of Settings (it would be ignored): {unknown}"
    assert sum(name.startswith("DETRFORGE_") for _, name in used) >= 6


def test_the_api_environment_loads_into_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    environment = compose_environment(compose()["services"]["api"])
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    password = env_example()["POSTGRES_PASSWORD"]
    assert settings.host == "0.0.0.0"
    assert settings.port == 8321
    assert settings.home == Path("/var/lib/detrforge")
    assert settings.resolved_database_url() == (
        f"postgresql://detrforge:{password}@postgres:5432/detrforge"
    )
    assert settings.resolved_artifact_root() == "s3://detrforge/artifacts"
    assert settings.resolved_s3_buckets() == frozenset({"detrforge"})
    assert settings.resolved_tracking_uri() == "http://mlflow:5000"
    assert settings.resolved_ray_address() == "http://ray-head:8265"
    assert settings.resolved_data_roots() == (Path("/data"),)
    # The ecosystem's own names are the ones the settings model reads (its aliases).
    assert {"MLFLOW_TRACKING_URI", "RAY_ADDRESS"} <= settings_env_names()


def test_every_aws_name_given_to_the_api_reaches_the_jobs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    environment = compose_environment(compose()["services"]["api"])
    aws = {name: value for name, value in environment.items() if name.startswith("AWS_")}
    assert set(aws) == {
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DETRFORGE_HOME", str(tmp_path))  # job_env creates the home
    forwarded = job_env(Settings())
    assert {name: forwarded.get(name) for name in aws} == aws


def test_ray_gcs_port_is_not_redis_and_every_node_and_the_api_agree() -> None:
    services = compose()["services"]
    head = services["ray-head"]["command"]
    gcs_port = _flag(head, "port")
    assert gcs_port != "6379"
    for worker in ("ray-worker", "ray-worker-gpu"):
        assert _flag(services[worker]["command"], "address") == f"ray-head:{gcs_port}"
    ray_address = compose_environment(services["api"])["RAY_ADDRESS"]
    assert urlsplit(ray_address).port == int(_flag(head, "dashboard-port"))
    assert _flag(head, "dashboard-host") == "0.0.0.0"


def test_each_worker_offers_a_hardware_target_resource() -> None:
    services = compose()["services"]
    offered = {
        name: json.loads(_flag(services[name]["command"], "resources"))
        for name in ("ray-worker", "ray-worker-gpu")
    }
    assert offered == {"ray-worker": {"hw_cpu_x86": 1}, "ray-worker-gpu": {"hw_gpu_local": 1}}
    assert _flag(services["ray-worker-gpu"]["command"], "num-gpus") == "1"
    assert services["ray-worker-gpu"]["profiles"] == ["gpu"]


def test_the_mlflow_server_is_the_one_the_api_and_jobs_use() -> None:
    services = compose()["services"]
    mlflow = services["mlflow"]
    command, environment = mlflow["command"], compose_environment(mlflow)
    assert command[:2] == ["mlflow", "server"]
    assert _flag(command, "workers") == "1"
    assert environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    store = urlsplit(environment["MLFLOW_BACKEND_STORE_URI"])
    assert (store.scheme, store.hostname, store.path) == (
        "postgresql+psycopg",
        "postgres",
        "/mlflow",
    )
    assert _flag(command, "artifacts-destination").startswith("s3://detrforge/")
    # The address the API hands to every job must pass the server's Host header check.
    tracking = urlsplit(compose_environment(services["api"])["MLFLOW_TRACKING_URI"])
    assert (tracking.hostname, tracking.port) == ("mlflow", int(_flag(command, "port")))
    allowed = _flag(command, "allowed-hosts").split(",")
    assert any(fnmatch.fnmatch(tracking.netloc, pattern) for pattern in allowed)


def test_every_image_is_pinned() -> None:
    for name, service in compose()["services"].items():
        image = service["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image else ""
        assert tag and tag != "latest" and any(c.isdigit() for c in tag), f"{name}: {image}"


def test_variables_are_in_env_example_and_secrets_have_no_default() -> None:
    variables = compose_variables()
    example = env_example()
    assert set(variables) <= set(example), sorted(set(variables) - set(example))
    secrets = {"POSTGRES_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY"}
    assert secrets <= set(variables)
    for name in secrets:
        assert not variables[name] & {":-", "-"}, f"{name} has a default in compose.yaml"
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        compose({k: v for k, v in example.items() if k != "POSTGRES_PASSWORD"})


def test_the_infra_readme_names_every_setting_and_variable() -> None:
    services = compose()["services"]
    names = set(compose_variables())
    names |= {name for service in services.values() for name in compose_environment(service)}
    for _, doc in manifests():
        if doc["kind"] in ("ConfigMap", "Secret"):
            names |= set(doc.get("data") or doc.get("stringData") or {})
    readme = (INFRA / "README.md").read_text()
    missing = sorted(name for name in names if f"`{name}" not in readme)
    assert not missing, f"infra/README.md does not name {missing}"
