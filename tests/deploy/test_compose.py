"""docker-compose.yml: every service wired to the others and to the files it mounts."""

from __future__ import annotations

import argparse
import base64
import importlib
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
from observability.prometheus_server import INSTALL_HINT, find_binary

from streamem.config import Config, load_config

from .files import (
    DEPLOY,
    DOCKER,
    DOCKERFILE,
    JOB,
    REPO,
    all_mounts,
    cmd_config_path,
    compose,
    compose_config_file,
    environment,
    load_yaml,
    mount_at,
    mount_covering,
    mounts_under,
    option_value,
    ports,
    service,
)

SERVICES = {"kafka", "streamem", "producer", "prometheus", "grafana"}
PROMETHEUS_PORT = 9090  # prom/prometheus' default --web.listen-address


@pytest.fixture(scope="module")
def cfg() -> Config:
    return load_config(compose_config_file(), environ={})


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` -> {NAME: (host, port)}."""
    out = {}
    for item in value.split(","):
        name, _, address = item.partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def test_services_and_volumes_are_declared() -> None:
    assert set(compose()["services"]) == SERVICES
    named = {m.source for m in all_mounts() if not m.bind}
    declared = set(compose().get("volumes") or {})
    assert named <= declared, f"named volumes used but not declared: {sorted(named - declared)}"


def test_every_mounted_file_exists_in_the_repo() -> None:
    missing = [f"{m.service}: {m.source}" for m in all_mounts()
               if m.bind and not m.host_path().exists()]
    assert not missing, f"compose mounts paths that do not exist: {missing}"


def test_streamem_is_built_from_the_dockerfile_at_the_repo_root() -> None:
    for name in ("streamem", "producer"):
        build = service(name)["build"]
        context = (DOCKER / build["context"]).resolve()
        assert context == REPO, f"{name}: build context {context} is not the repo root {REPO}"
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    assert service("producer")["image"] == service("streamem")["image"], (
        "the producer must run the same image the streamem service builds")


def test_config_is_mounted_where_the_image_cmd_reads_it(cfg: Config) -> None:
    assert "command" not in service("streamem") or option_value(
        service("streamem")["command"], "--config") == cmd_config_path()
    assert compose_config_file() == DOCKER / "streamem.yaml"
    assert cfg.kafka.input_topic


def test_config_binds_metrics_where_other_containers_reach_it(cfg: Config) -> None:
    assert cfg.metrics.enabled
    assert cfg.metrics.host == "0.0.0.0", (
        f"metrics.host {cfg.metrics.host!r}: inside a container bind 0.0.0.0, or Prometheus "
        "and the published port cannot reach /metrics")
    published = [p.container_port for p in ports("streamem")]
    assert published == [cfg.metrics.port], (
        f"streamem publishes container ports {published}, config metrics.port is "
        f"{cfg.metrics.port}")


def test_host_ports_are_published_on_loopback_only() -> None:
    exposed = [(name, p) for name in SERVICES for p in ports(name) if p.host_ip != "127.0.0.1"]
    assert not exposed, f"publish host ports as 127.0.0.1:host:container: {exposed}"


def test_bootstrap_servers_name_the_kafka_service_listener(cfg: Config) -> None:
    env = environment(service("kafka"))
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    bound = listeners(env["KAFKA_LISTENERS"])
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
                     .split(","))
    in_network = {f"{host}:{port}": name for name, (host, port) in advertised.items()
                  if host == "kafka"}
    for server in cfg.kafka.bootstrap_servers.split(","):
        assert server in in_network, (
            f"kafka.bootstrap_servers {server} is not an advertised listener on the compose "
            f"service 'kafka' (advertised: {env['KAFKA_ADVERTISED_LISTENERS']})")
        name = in_network[server]
        assert bound[name][1] == advertised[name][1], f"listener {name} binds another port"
        assert protocols[name] == cfg.kafka.security_protocol
    assert service("kafka").get("hostname", "kafka") == "kafka"


def test_kafka_is_a_single_node_kraft_cluster() -> None:
    env = environment(service("kafka"))
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    _, cport = listeners(env["KAFKA_LISTENERS"])[controller]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:{cport}"
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env.get(key) == "1", f"{key} must be 1 on a single broker (got {env.get(key)})"
    cluster_id = env["CLUSTER_ID"]
    assert len(cluster_id) == 22 and len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, (
        f"CLUSTER_ID {cluster_id!r} is not a 22-character base64url UUID")
    log_dir = env["KAFKA_LOG_DIRS"]
    assert not mount_at("kafka", log_dir).bind, "keep Kafka's data on a named volume"


def test_daemon_and_producer_wait_for_a_healthy_broker() -> None:
    assert "test" in service("kafka")["healthcheck"]
    for name in ("streamem", "producer"):
        depends = service(name)["depends_on"]
        assert depends["kafka"]["condition"] == "service_healthy", name
    assert service("streamem")["restart"] == "unless-stopped"


def test_checkpoints_live_on_a_named_volume(cfg: Config) -> None:
    assert cfg.checkpoint.path is not None
    assert PurePosixPath(cfg.checkpoint.path).is_absolute()
    mount = mount_covering("streamem", cfg.checkpoint.path)
    assert not mount.bind, f"checkpoint.path {cfg.checkpoint.path} is not on a named volume"


def test_producer_writes_the_daemons_input_topic(cfg: Config) -> None:
    command = [str(word) for word in service("producer")["command"]]
    assert command[0] == "produce", f"the producer should run `streamem produce`, got {command}"
    assert option_value(command, "--topic") == cfg.kafka.input_topic, (
        f"the producer writes {option_value(command, '--topic')}, the daemon reads "
        f"{cfg.kafka.input_topic}")
    assert option_value(command, "--bootstrap-servers") == cfg.kafka.bootstrap_servers


def test_producer_flags_are_accepted_by_the_produce_command(cfg: Config) -> None:
    try:
        produce = importlib.import_module("streamem.commands.produce")
    except ModuleNotFoundError:
        pytest.fail("streamem.commands.produce does not exist, yet docker-compose.yml runs "
                    "`streamem produce`")
    parser = argparse.ArgumentParser(prog="streamem produce", exit_on_error=False)
    produce.add_arguments(parser)
    command = [str(word) for word in service("producer")["command"]]
    args = parser.parse_args(command[1:])
    assert args.format == cfg.input.format, (
        f"the producer writes {args.format} messages, the daemon decodes {cfg.input.format}")
    assert cfg.input.n_features in (None, args.features), (
        f"the producer writes {args.features} features, input.n_features is "
        f"{cfg.input.n_features}")


def test_prometheus_scrapes_the_streamem_service(cfg: Config) -> None:
    config_mount = mount_at("prometheus", "/etc/prometheus/prometheus.yml")
    scrape = load_yaml(config_mount.host_path())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    repo_jobs = {job["job_name"] for job in load_yaml(DEPLOY / "prometheus/prometheus.yml")
                 ["scrape_configs"]}
    assert JOB in repo_jobs and set(jobs) == {JOB}, (
        f"compose scrapes jobs {sorted(jobs)}; the alert rules expect job {JOB!r}")
    [dns] = jobs[JOB]["dns_sd_configs"]  # every replica of the service, not one of them
    assert (dns["names"], dns.get("type", "SRV"), dns["port"]) == (
        ["streamem"], "A", cfg.metrics.port)
    assert "static_configs" not in jobs[JOB]
    assert jobs[JOB].get("metrics_path", "/metrics") == "/metrics"


def test_two_instances_share_one_model(cfg: Config) -> None:
    """The compose file runs two instances in one group, sharing one model; each can be
    reached and scraped, and none keeps a checkpoint of its own."""
    svc = service("streamem")
    replicas = svc["deploy"]["replicas"]
    assert replicas >= 2
    assert "container_name" not in svc and "hostname" not in svc, (
        "a fixed container name or hostname cannot be given to two replicas")
    raw = load_yaml(compose_config_file())
    assert raw["sharing"]["enabled"] is True, "set sharing.enabled explicitly"
    assert cfg.sharing.enabled and cfg.delivery.guarantee == "at_least_once", (
        "exactly once needs a transactional id per instance")
    [published] = ports("streamem")
    assert len(published.host_ports) >= replicas, (
        f"{replicas} replicas need {replicas} host ports, got {published.host_ports}")
    partitions = int(environment(service("kafka"))["KAFKA_NUM_PARTITIONS"])
    assert partitions >= replicas, "replicas beyond the input's partitions sit idle"
    assert "deploy" not in service("producer"), "one producer is enough"


def test_prometheus_rule_files_are_the_repo_alerts() -> None:
    config_mount = mount_at("prometheus", "/etc/prometheus/prometheus.yml")
    rule_files = load_yaml(config_mount.host_path())["rule_files"]
    assert rule_files, "compose's Prometheus loads no alert rules"
    for rule_file in rule_files:
        target = PurePosixPath(config_mount.target).parent / rule_file
        assert mount_at("prometheus", str(target)).host_path() == DEPLOY / "prometheus/alerts.yml"


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = find_binary("promtool")
    if promtool is None:
        pytest.fail(f"promtool not found: {INSTALL_HINT}")
    for m in mounts_under("prometheus", "/etc/prometheus"):
        shutil.copy(m.host_path(), tmp_path / PurePosixPath(m.target).name)
    proc = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"promtool check config failed:\n{proc.stdout}{proc.stderr}"


def test_grafana_mounts_the_repo_provisioning_where_it_points() -> None:
    provisioning = DEPLOY / "grafana/provisioning"
    dashboards = mount_at("grafana", "/etc/grafana/provisioning/dashboards")
    assert dashboards.host_path() == provisioning / "dashboards"
    for provider_file in sorted((provisioning / "dashboards").glob("*.yml")):
        for provider in load_yaml(provider_file)["providers"]:
            path = provider["options"]["path"]
            assert mount_at("grafana", path).host_path() == DEPLOY / "grafana/dashboards", (
                f"{provider_file.name} loads dashboards from {path}, which compose does not "
                "mount from deploy/grafana/dashboards")
    env = environment(service("grafana"))
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    home = PurePosixPath(env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    mount = mount_covering("grafana", str(home))
    assert (mount.host_path() / home.relative_to(mount.target)).is_file(), (
        f"the home dashboard {home} is not a mounted file")


def test_grafana_datasource_is_the_repo_one_pointed_at_compose_prometheus() -> None:
    repo_file = DEPLOY / "grafana/provisioning/datasources/prometheus.yml"
    mounted = mount_at("grafana", "/etc/grafana/provisioning/datasources/prometheus.yml")
    ours = load_yaml(mounted.host_path())["datasources"]
    theirs = load_yaml(repo_file)["datasources"]
    assert [{k: v for k, v in d.items() if k != "url"} for d in ours] == [
        {k: v for k, v in d.items() if k != "url"} for d in theirs], (
        f"{mounted.source} drifted from {repo_file.relative_to(REPO)} (only url may differ)")
    url = urlsplit(ours[0]["url"])
    assert (url.hostname, url.port) == ("prometheus", PROMETHEUS_PORT)
    assert "prometheus" in compose()["services"]
