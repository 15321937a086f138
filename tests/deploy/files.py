"""Readers for the deployment files: paths, YAML, Dockerfile instructions, compose and k8s parts.

Plain parsing only, no Docker or cluster; the tests compare what these return across files.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import tomllib
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKER = DEPLOY / "docker"
K8S = DEPLOY / "k8s"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "docker-compose.yml"
#: The job the alert rules select on (``up{job="streamem"}``), as the repo's scrape config names it.
JOB = "streamem"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


# --- Dockerfile --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: ``name`` upper-cased, ``text`` its arguments on one line."""

    name: str
    text: str

    def exec_form(self) -> list[str]:
        """The JSON array form (``["a", "b"]``) of ENTRYPOINT, CMD, VOLUME or HEALTHCHECK CMD."""
        text = self.text
        if self.name == "HEALTHCHECK":
            text = text[text.index(" CMD ") + len(" CMD "):] if " CMD " in text else ""
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise AssertionError(
                f"{self.name} is not in exec (JSON array) form: {self.text}") from None
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self.text
        return value

    def words(self) -> list[str]:
        return shlex.split(self.text)


@cache
def dockerfile() -> tuple[Instruction, ...]:
    """The Dockerfile's instructions, comments dropped and ``\\`` continuations joined."""
    out: list[Instruction] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        name, _, text = (pending + stripped).partition(" ")
        out.append(Instruction(name.upper(), " ".join(text.split())))
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"
    return tuple(out)


def instructions(name: str) -> list[Instruction]:
    return [i for i in dockerfile() if i.name == name]


def last(name: str) -> Instruction:
    found = instructions(name)
    assert found, f"the Dockerfile has no {name} instruction"
    return found[-1]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for inst in instructions("ENV"):
        for word in inst.words():
            key, sep, value = word.partition("=")
            assert sep, f"use ENV key=value (found {inst.text!r})"
            env[key] = value
    return env


def dockerfile_uid() -> int:
    user = last("USER").text.split(":")[0]
    assert user.isdigit(), (
        f"USER should be a numeric uid (Kubernetes' runAsNonRoot checks it): {user}")
    return int(user)


def cmd_config_path() -> str:
    """The ``--config`` path the image's CMD runs with."""
    return option_value(last("CMD").exec_form(), "--config")


def option_value(argv: list[str], flag: str) -> str:
    for i, word in enumerate(argv):
        if word == flag and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
    raise AssertionError(f"{flag} not given in {argv}")


# --- docker-compose.yml ------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"docker-compose.yml has no service {name!r} (has {sorted(services)})"
    return services[name]


@dataclass(frozen=True)
class Mount:
    """A compose volume entry: ``source`` is a repo path for bind mounts, else a volume name."""

    service: str
    source: str
    target: str
    bind: bool

    def host_path(self) -> Path:
        assert self.bind, f"{self.service}: {self.source} is a named volume"
        return (DOCKER / self.source).resolve()


def mounts(name: str) -> list[Mount]:
    out = []
    for entry in service(name).get("volumes", []):
        assert isinstance(entry, str), f"{name}: use the short volume syntax (got {entry!r})"
        source, target = entry.split(":")[:2]
        out.append(Mount(name, source, target, source.startswith((".", "/"))))
    return out


def all_mounts() -> Iterator[Mount]:
    for name in compose()["services"]:
        yield from mounts(name)


def mount_at(name: str, target: str) -> Mount:
    for m in mounts(name):
        if PurePosixPath(m.target) == PurePosixPath(target):
            return m
    raise AssertionError(f"compose service {name!r} mounts nothing at {target} "
                         f"(mounts: {[f'{m.source}:{m.target}' for m in mounts(name)]})")


def mounts_under(name: str, directory: str) -> list[Mount]:
    """Bind mounts of service ``name`` placed directly in ``directory``."""
    return [m for m in mounts(name)
            if m.bind and PurePosixPath(m.target).parent == PurePosixPath(directory)]


def mount_covering(name: str, path: str) -> Mount:
    """The mount of service ``name`` whose target is ``path`` or one of its parents."""
    p = PurePosixPath(path)
    for m in mounts(name):
        if p == PurePosixPath(m.target) or PurePosixPath(m.target) in p.parents:
            return m
    raise AssertionError(f"compose service {name!r} mounts nothing holding {path}")


@dataclass(frozen=True)
class Port:
    """A published port; ``host_ports`` holds one port, or a range's (one per replica)."""

    host_ip: str | None
    host_ports: range
    container_port: int


def ports(name: str) -> list[Port]:
    out = []
    for entry in service(name).get("ports", []):
        parts = str(entry).split("/")[0].split(":")
        assert len(parts) in (2, 3), f"{name}: write ports as [ip:]host:container (got {entry!r})"
        ip = parts[0] if len(parts) == 3 else None
        first, _, last = parts[-2].partition("-")
        out.append(Port(ip, range(int(first), int(last or first) + 1), int(parts[-1])))
    return out


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def compose_config_file() -> Path:
    """The host file compose mounts where the image's CMD reads its config."""
    return mount_at("streamem", cmd_config_path()).host_path()


# --- Kubernetes ----------------------------------------------------------------------------------


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@cache
def k8s_objects() -> tuple[dict[str, Any], ...]:
    return tuple(doc for path in k8s_files() for doc in load_yaml_all(path))


def k8s_object(kind: str) -> dict[str, Any]:
    found = [o for o in k8s_objects() if o.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/k8s, found {len(found)}"
    return found[0]


def k8s_container() -> dict[str, Any]:
    containers = k8s_object("Deployment")["spec"]["template"]["spec"]["containers"]
    named = [c for c in containers if c["name"] == "streamem"]
    assert len(named) == 1, "the Deployment needs one container named 'streamem'"
    return named[0]


def container_port(container: dict[str, Any], port: int | str) -> dict[str, Any]:
    """The container's port entry that ``port`` (a number or a port name) refers to."""
    for entry in container.get("ports", []):
        if port in (entry["containerPort"], entry.get("name")):
            return entry
    raise AssertionError(f"port {port!r} is not a port of container {container['name']!r} "
                         f"(ports: {container.get('ports')})")


def configmap_config_text() -> str:
    data = k8s_object("ConfigMap")["data"]
    assert "streamem.yaml" in data, f"the ConfigMap has no streamem.yaml (keys: {sorted(data)})"
    return data["streamem.yaml"]
