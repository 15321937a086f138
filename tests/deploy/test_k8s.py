"""deploy/k8s: manifests that agree with the image, the compose stack and the config schema."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from streamem.config import Config, load_config

from .files import (
    JOB,
    K8S,
    cmd_config_path,
    configmap_config_text,
    container_port,
    dockerfile_uid,
    k8s_container,
    k8s_files,
    k8s_object,
    k8s_objects,
    last,
    load_yaml,
    pyproject,
    service,
)

KINDS = {"ConfigMap", "Deployment", "Service", "PodMonitor"}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("k8s") / "streamem.yaml"
    path.write_text(configmap_config_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cfg(config_file: Path) -> Config:
    return load_config(config_file, environ={})


def pod_spec() -> dict[str, Any]:
    return k8s_object("Deployment")["spec"]["template"]["spec"]


def pod_labels() -> dict[str, str]:
    return k8s_object("Deployment")["spec"]["template"]["metadata"]["labels"]


def selects_pods(selector: dict[str, str]) -> bool:
    return bool(selector) and all(pod_labels().get(k) == v for k, v in selector.items())


def test_every_manifest_parses_and_is_namespace_free() -> None:
    kinds = [str(obj.get("kind")) for obj in k8s_objects()]
    assert sorted(kinds) == sorted(KINDS), f"deploy/k8s holds {kinds}, expected {sorted(KINDS)}"
    for obj in k8s_objects():
        assert obj.get("apiVersion"), f"{obj.get('kind')} has no apiVersion"
        assert "namespace" not in obj["metadata"], (
            f"{obj['kind']} {obj['metadata']['name']} sets a namespace; use `apply -n`")


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert sorted(listed) == [p.name for p in k8s_files()], (
        f"kustomization resources {listed} != the manifests in deploy/k8s "
        f"{[p.name for p in k8s_files()]}")


def test_kustomize_builds_the_same_objects() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: kustomize build not checked (the YAML checks ran)")
    proc = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize failed:\n{proc.stderr}"
    built = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    assert sorted(d["kind"] for d in built) == sorted(KINDS)


def test_configmap_config_loads_with_the_real_validator(cfg: Config) -> None:
    assert cfg.metrics.enabled
    assert cfg.metrics.host == "0.0.0.0", (
        f"metrics.host {cfg.metrics.host!r}: a pod must bind 0.0.0.0 for probes and Prometheus")
    assert cfg.checkpoint.path is not None and PurePosixPath(cfg.checkpoint.path).is_absolute()


def test_metrics_port_agrees_everywhere(cfg: Config) -> None:
    container = k8s_container()
    port = container_port(container, "metrics")
    assert port["containerPort"] == cfg.metrics.port, (
        f"containerPort {port['containerPort']} != the ConfigMap's metrics.port {cfg.metrics.port}")
    probes = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in probes.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, f"{probe} should GET {path}, not {get['path']}"
        target = container_port(container, get["port"])["containerPort"]
        assert target == cfg.metrics.port, f"{probe} probes port {target}, not {cfg.metrics.port}"
    svc = k8s_object("Service")
    assert selects_pods(svc["spec"]["selector"]), "the Service selects no streamem pod"
    [svc_port] = svc["spec"]["ports"]
    assert svc_port["port"] == cfg.metrics.port
    assert container_port(container, svc_port["targetPort"])["containerPort"] == cfg.metrics.port
    assert svc_port["name"] == port["name"]


def test_podmonitor_scrapes_the_metrics_port_as_the_alerting_job() -> None:
    monitor = k8s_object("PodMonitor")["spec"]
    assert selects_pods(monitor["selector"]["matchLabels"]), "the PodMonitor selects no pod"
    [endpoint] = monitor["podMetricsEndpoints"]
    container_port(k8s_container(), endpoint["port"])
    assert endpoint.get("path", "/metrics") == "/metrics"
    assert pod_labels().get(monitor.get("jobLabel", "")) == JOB, (
        f"the PodMonitor's jobLabel must name a pod label whose value is {JOB!r}: the alert "
        "rules select job=\"streamem\"")


def test_image_is_the_one_compose_builds() -> None:
    image = k8s_container()["image"]
    assert image == service("streamem")["image"], (
        f"k8s runs {image}, compose builds {service('streamem')['image']}")
    assert image.rpartition(":")[2] == pyproject()["project"]["version"], (
        f"image tag of {image} != pyproject's version {pyproject()['project']['version']}")


def test_config_is_mounted_where_the_command_reads_it() -> None:
    container = k8s_container()
    args = container.get("args", last("CMD").exec_form())
    assert "command" not in container, "keep the image's ENTRYPOINT (the console script)"
    assert args == last("CMD").exec_form(), f"args {args} drifted from the Dockerfile's CMD"
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    mounted = {}
    for mount in container["volumeMounts"]:
        source = volumes[mount["name"]].get("configMap")
        if source is None:
            continue
        assert source["name"] == k8s_object("ConfigMap")["metadata"]["name"]
        for item in source.get("items", [{"key": k, "path": k}
                                         for k in k8s_object("ConfigMap")["data"]]):
            mounted[str(PurePosixPath(mount["mountPath"]) / item["path"])] = item["key"]
    assert mounted.get(cmd_config_path()) == "streamem.yaml", (
        f"the ConfigMap's streamem.yaml is not mounted at {cmd_config_path()} (mounted: {mounted})")


def test_pod_runs_non_root_on_a_read_only_root(cfg: Config) -> None:
    pod, container = pod_spec()["securityContext"], k8s_container()
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == dockerfile_uid(), "runAsUser differs from the Dockerfile's USER"
    own = container["securityContext"]
    assert own["readOnlyRootFilesystem"] is True
    assert own["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(m["name"] for m in mounts.values()) <= set(volumes), "a mount names no volume"
    assert cfg.checkpoint.path is not None, "the pod needs checkpoint.path on a writable volume"
    checkpoint_dir = str(PurePosixPath(cfg.checkpoint.path).parent)
    assert checkpoint_dir in mounts, (
        f"checkpoint.path {cfg.checkpoint.path} is not on a writable volume (root fs is read-only)")
    volume = volumes[mounts[checkpoint_dir]["name"]]
    assert "emptyDir" in volume or "persistentVolumeClaim" in volume
    assert not mounts[checkpoint_dir].get("readOnly", False)
    assert "/tmp" in mounts, "give Python a writable /tmp (root fs is read-only)"


def test_deployment_defaults(cfg: Config) -> None:
    spec = k8s_object("Deployment")["spec"]
    assert spec["replicas"] == 1
    assert selects_pods(spec["selector"]["matchLabels"])
    resources = k8s_container()["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    assert cfg.kafka.group_id, "replicas split partitions through one consumer group"


def test_deployment_scales_with_replicas(cfg: Config) -> None:
    """``replicas: N`` as it stands: the pods share one model, and nothing a pod writes or
    claims is fixed to one pod (no shared checkpoint key, no volume claim, no fixed identity)."""
    raw = yaml.safe_load(configmap_config_text())
    assert raw["sharing"]["enabled"] is True, "set sharing.enabled explicitly"
    assert cfg.sharing.enabled
    assert cfg.checkpoint.kafka_topic is None, (
        "checkpoint.kafka_topic is keyed by kafka.group_id: N pods would write one key")
    volumes = pod_spec()["volumes"]
    claimed = [v["name"] for v in volumes if "persistentVolumeClaim" in v]
    assert not claimed, f"a Deployment's replicas cannot share the claims {claimed}"
    assert not {"hostname", "subdomain"} & set(pod_spec()), "a fixed hostname for every pod"
    fixed = [e["name"] for e in k8s_container()["env"] if "value" in e and e["name"] in
             {"STREAMEM_KAFKA__CLIENT_ID", "STREAMEM_DELIVERY__TRANSACTIONAL_ID"}]
    assert not fixed, f"{fixed}: one fixed identity for every pod"
    assert cfg.delivery.guarantee == "at_least_once", (
        "exactly once in a Deployment: every pod has the transactional id "
        "<group_id>.<client_id> and fences the others")
    strategy = k8s_object("Deployment")["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"][
        "maxUnavailable"] == 0, "pods sharing the model may overlap: roll without downtime"


def test_env_overrides_map_to_real_config_keys(config_file: Path) -> None:
    env = k8s_container()["env"]
    names = [e["name"] for e in env if e["name"].startswith("STREAMEM_")]
    assert "STREAMEM_KAFKA__SASL_PLAIN_PASSWORD" in names
    secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
    assert secret_refs["STREAMEM_KAFKA__SASL_PLAIN_PASSWORD"]["optional"] is True, (
        "the SASL Secret must stay optional: PLAINTEXT clusters have none")
    for entry in env:
        name = entry["name"]
        if not name.startswith("STREAMEM_"):
            continue
        value = entry.get("value", "sample-secret-value")
        cfg = load_config(config_file, environ={name: value})
        section, key = name.removeprefix("STREAMEM_").lower().split("__")
        got = getattr(getattr(cfg, section), key)
        assert got == yaml.safe_load(value), f"{name}={value!r} set {section}.{key} to {got!r}"
