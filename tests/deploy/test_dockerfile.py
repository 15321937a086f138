"""The image: installs the package from pyproject, runs its console script as a non-root user."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from streamem.config import load_config

from .files import (
    DOCKER,
    REPO,
    cmd_config_path,
    compose_config_file,
    dockerfile_env,
    dockerfile_uid,
    instructions,
    last,
    pyproject,
)


def test_base_image_is_a_slim_python_the_package_supports() -> None:
    image = last("FROM").text
    version = re.fullmatch(r"python:(\d+)\.(\d+)-slim", image)
    assert version, f"FROM {image}: expected an official python:X.Y-slim image"
    requires = pyproject()["project"]["requires-python"]
    minimum = re.fullmatch(r">=\s*(\d+)\.(\d+)", requires)
    assert minimum, f"requires-python {requires!r}: expected >=X.Y"
    assert tuple(map(int, version.groups())) >= tuple(map(int, minimum.groups())), (
        f"FROM {image} is older than pyproject's requires-python {requires}")


def test_package_is_pip_installed_from_the_copied_pyproject() -> None:
    copied = [src for inst in instructions("COPY") for src in inst.words()[:-1]]
    project = pyproject()["project"]
    needed = ["pyproject.toml", project["readme"], "streamem"]
    missing = [path for path in needed if path not in copied]
    assert not missing, f"the Dockerfile does not COPY {missing} (pyproject's build needs them)"
    for path in needed:
        assert (REPO / path).exists(), f"COPY source {path} does not exist in the repo"
    installs = [i.text for i in instructions("RUN") if "pip install" in i.text]
    pattern = r"pip install (--no-cache-dir )?'\.\[fast,codecs\]'(\s|$)"
    assert any(re.search(pattern, t) for t in installs), (
        f"the Dockerfile should `pip install --no-cache-dir '.[fast,codecs]'` from pyproject; "
        f"found {installs}")
    extras = project["optional-dependencies"]
    assert "fast" in extras and "codecs" in extras, "the image installs these two extras"


def test_entrypoint_is_the_console_script_declared_in_pyproject() -> None:
    scripts = pyproject()["project"]["scripts"]
    entrypoint = last("ENTRYPOINT").exec_form()
    assert len(entrypoint) == 1 and entrypoint[0] in scripts, (
        f"ENTRYPOINT {entrypoint} is not one of pyproject's [project.scripts] {sorted(scripts)}")
    module, _, func = scripts[entrypoint[0]].partition(":")
    assert callable(getattr(importlib.import_module(module), func))


def test_cmd_is_a_valid_run_command_line() -> None:
    from streamem.commands import run

    cmd = last("CMD").exec_form()
    assert cmd[0] == "run", f"CMD should start the daemon (`run ...`), got {cmd}"
    parser = argparse.ArgumentParser(prog="streamem run", exit_on_error=False)
    run.add_arguments(parser)
    args = parser.parse_args(cmd[1:])
    assert args.config == cmd_config_path() == "/etc/streamem/streamem.yaml"


def test_runs_as_a_non_root_user_owning_the_checkpoint_volume() -> None:
    uid = dockerfile_uid()
    assert uid != 0, "USER must not be root"
    volumes = last("VOLUME").exec_form()
    assert len(volumes) == 1, f"expected one VOLUME (the checkpoint dir), got {volumes}"
    volume = volumes[0]
    chowned = [i.text for i in instructions("RUN")
               if re.search(rf"chown (-R )?{uid}(:\d+)? [^&]*{re.escape(volume)}(\s|$)", i.text)]
    assert chowned, f"no RUN chowns the VOLUME {volume} to uid {uid}"
    checkpoint = load_config(compose_config_file(), environ={}).checkpoint.path
    assert checkpoint is not None
    assert PurePosixPath(volume) in PurePosixPath(checkpoint).parents, (
        f"the compose config's checkpoint.path {checkpoint} is not inside the VOLUME {volume}")


def test_environment_limits_blas_threads_and_unbuffers_output() -> None:
    env = dockerfile_env()
    assert env.get("PYTHONUNBUFFERED") == "1", "logs must not sit in a buffer: PYTHONUNBUFFERED=1"
    assert env.get("OPENBLAS_NUM_THREADS") == "1", (
        "OPENBLAS_NUM_THREADS=1: BLAS threads compete with the Kafka client's I/O thread")


def test_exposed_port_and_healthcheck_match_the_metrics_config() -> None:
    port = load_config(compose_config_file(), environ={}).metrics.port
    exposed = [int(p.split("/")[0]) for inst in instructions("EXPOSE") for p in inst.words()]
    assert exposed == [port], f"EXPOSE {exposed} but the config's metrics.port is {port}"
    check = last("HEALTHCHECK").exec_form()
    assert check[:2] == ["python", "-c"], f"the HEALTHCHECK should use python (no curl): {check}"
    code = check[2]
    compile(code, "<HEALTHCHECK>", "exec")
    urls = re.findall(r"'(http://[^']+)'", code)
    assert len(urls) == 1, f"expected one URL in the HEALTHCHECK, got {urls}"
    url = urlsplit(urls[0])
    assert (url.hostname, url.port, url.path) == ("127.0.0.1", port, "/healthz"), (
        f"HEALTHCHECK hits {urls[0]}, expected http://127.0.0.1:{port}/healthz")


def test_dockerignore_keeps_what_the_build_copies() -> None:
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    for inst in instructions("COPY"):
        for src in inst.words()[:-1]:
            assert f"!{src}" in ignore or f"!{src}/" in ignore, (
                f"Dockerfile.dockerignore excludes {src}, which the Dockerfile copies")
