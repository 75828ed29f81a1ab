"""The Kubernetes manifests and the container image as the tests read them: overlays rendered
by ``kubectl kustomize``, the Dockerfile's instructions, and the secrets the operators make."""

from __future__ import annotations

import base64
import functools
import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parent.parent
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
OVERLAYS = ("dev", "prod")
MIN_KUSTOMIZE = (5, 0)

# Secrets the prod overlay expects to exist (made by the operator of the service, see the
# overlay's kustomization.yaml and docs/production.md), with the keys the pods read.
EXTERNAL_SECRETS = {
    "prod": {
        "prompt-pilot-token": {"token"},
        "prompt-operator-token": {"token"},
        "prompt-kafka-ca": {"ca.crt"},
    },
    "dev": {},
}


def kubectl() -> str:
    path = shutil.which("kubectl")
    assert path, "kubectl is needed (`make system-deps` installs Debian's kubernetes-client)"
    out = subprocess.run(
        [path, "version", "--client", "-o", "json"], capture_output=True, timeout=60, check=True
    )
    version = json.loads(out.stdout).get("kustomizeVersion", "v0")
    found = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    assert found >= MIN_KUSTOMIZE, f"kubectl's kustomize is {version}; the overlays need v5+"
    return path


@functools.cache
def rendered_text(overlay: str) -> str:
    done = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


@dataclass
class Manifests:
    """One rendered overlay."""

    overlay: str
    docs: list[dict[str, Any]]

    @property
    def namespace(self) -> str:
        [ns] = self.of_kind("Namespace")
        return str(ns["metadata"]["name"])

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} in the {self.overlay} overlay"
        return found[0]

    def find(self, kind: str, prefix: str) -> dict[str, Any]:
        """A generated object (ConfigMap, Secret) by its name before the hash suffix."""
        found = [d for d in self.of_kind(kind) if _unhashed(d["metadata"]["name"]) == prefix]
        assert len(found) == 1, f"{kind}/{prefix}-<hash>: {len(found)} in {self.overlay}"
        return found[0]

    def workloads(self) -> list[dict[str, Any]]:
        return self.of_kind("Deployment") + self.of_kind("Job")

    def component(self, name: str) -> dict[str, Any]:
        """The Deployment or Job whose pods carry app.kubernetes.io/component=name."""
        found = [w for w in self.workloads() if pod_labels(w).get(COMPONENT) == name]
        assert len(found) == 1, f"component {name}: {len(found)} workloads"
        return found[0]

    def secret_keys(self) -> dict[str, set[str]]:
        """Every Secret the pods may reference, with its keys: rendered ones, those the
        operators make for rendered resources, and the documented external ones."""
        keys: dict[str, set[str]] = {
            s["metadata"]["name"]: set(s.get("data", {})) | set(s.get("stringData", {}))
            for s in self.of_kind("Secret")
        }
        for cluster in self.of_kind("Cluster"):  # CloudNativePG's application user
            keys[f"{cluster['metadata']['name']}-app"] = CNPG_APP_KEYS
        for user in self.of_kind("KafkaUser"):  # Strimzi's User Operator, SCRAM
            if user["spec"]["authentication"]["type"] == "scram-sha-512":
                keys[user["metadata"]["name"]] = {"password", "sasl.jaas.config"}
        for cert in self.of_kind("Certificate"):  # cert-manager
            keys[cert["spec"]["secretName"]] = {"tls.crt", "tls.key", "ca.crt"}
        for name, wanted in EXTERNAL_SECRETS[self.overlay].items():
            keys.setdefault(name, wanted)
        return keys


COMPONENT = "app.kubernetes.io/component"
CNPG_APP_KEYS = {"username", "password", "host", "port", "dbname", "uri", "jdbc-uri", "pgpass"}


def _unhashed(name: str) -> str:
    return re.sub(r"-[a-z0-9]{10}$", "", name)


@functools.cache
def _manifests(overlay: str) -> Manifests:
    return Manifests(overlay, [d for d in yaml.safe_load_all(rendered_text(overlay)) if d])


def manifests(overlay: str) -> Manifests:
    return _manifests(overlay)


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels", {})
    return labels


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def container_env(m: Manifests, container: dict[str, Any]) -> dict[str, Any]:
    """Name -> value (a string) or the ``valueFrom`` object, envFrom ConfigMaps resolved."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        data = m.get("ConfigMap", source["configMapRef"]["name"])["data"]
        env.update(data)
    for item in container.get("env", []):
        env[item["name"]] = item["value"] if "value" in item else item["valueFrom"]
    return env


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ---- the Dockerfile ---------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    args: dict[str, str] = {}
    for text in logical:
        op, _, arg = text.partition(" ")
        op = op.upper()
        if op == "ARG" and not stages:
            key, _, default = arg.partition("=")
            args[key] = default
        elif op == "FROM":
            words = arg.split()
            base = re.sub(r"\$\{(\w+)\}", lambda g: args.get(g.group(1), ""), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        else:
            stages[-1].instructions.append((op, arg))
    return stages


def exec_form(arg: str) -> list[str]:
    value = json.loads(arg)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arg
    return value


def image_env(stage: Stage) -> dict[str, str]:
    """ENV KEY=VALUE pairs of a stage (``$VAR`` left as written)."""
    env: dict[str, str] = {}
    for arg in stage.all("ENV"):
        for word in shlex.split(arg):
            key, _, value = word.partition("=")
            env[key] = value
    return env


# ---- running a container's command outside Docker --------------------------------------------


@dataclass
class ContainerRun:
    """A container's argv and environment as the image and the manifests give them, with the
    pod's mounted files written under ``root`` (their paths in the environment rewritten)."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path


def container_run(
    m: Manifests,
    workload: dict[str, Any],
    container: dict[str, Any],
    *,
    root: Path,
    secrets: dict[str, dict[str, bytes]],
    program: str,
    tini: str,
) -> ContainerRun:
    """``secrets``: content of the Secrets the operators (or the operator of the service) make,
    by name and key. ``program`` replaces the image's ``prompt``, ``tini`` its ``/usr/bin/tini``."""
    [runtime] = [s for s in dockerfile_stages() if s.name == "runtime"]
    entrypoint = exec_form(runtime.all("ENTRYPOINT")[0])
    assert entrypoint[0] == "/usr/bin/tini" and entrypoint[-1] == "prompt"
    argv = [tini, *entrypoint[1:-1], program, *container.get("args", [])]
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    mounts: list[str] = []
    for mount in container.get("volumeMounts", []):
        volume, target = volumes[mount["name"]], root / mount["mountPath"].lstrip("/")
        if "emptyDir" in volume:
            continue  # /tmp and /dev/shm: the host's own
        mounts.append(mount["mountPath"])
        target.mkdir(parents=True, exist_ok=True)
        for secret, items in _secret_sources(volume):
            for key, path in items:
                (target / path).write_bytes(_secret_value(m, secrets, secret, key))
        if "configMap" in volume:
            for key, text in m.get("ConfigMap", volume["configMap"]["name"])["data"].items():
                (target / key).write_text(text)
    env = {k: v for k, v in image_env(runtime).items() if not v.startswith("$") and ":" not in v}
    env["PATH"] = f"{Path(program).parent}:/usr/local/bin:/usr/bin:/bin"

    def outside(value: str) -> str:
        """A file (or file:// URL) inside a mount: its copy under ``root``."""
        for path in mounts:
            for prefix in (path + "/", "file://" + path + "/"):
                if value.startswith(prefix):
                    return value.replace(path, str(root / path.lstrip("/")), 1)
        return value

    argv = [outside(arg) for arg in argv]
    for name, value in container_env(m, container).items():
        if isinstance(value, dict):
            ref = value["secretKeyRef"]
            value = _secret_value(m, secrets, ref["name"], ref["key"]).decode()
        env[name] = outside(value)
    cwd = root / runtime.all("WORKDIR")[-1].lstrip("/")
    cwd.mkdir(parents=True, exist_ok=True)
    return ContainerRun(argv, env, cwd)


def _secret_sources(volume: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    sources = [s["secret"] for s in volume.get("projected", {}).get("sources", [])]
    if "secret" in volume:
        sources.append({"name": volume["secret"]["secretName"], **volume["secret"]})
    return [(s["name"], [(i["key"], i["path"]) for i in s.get("items", [])]) for s in sources]


def _secret_value(m: Manifests, given: dict[str, dict[str, bytes]], name: str, key: str) -> bytes:
    rendered = [s for s in m.of_kind("Secret") if s["metadata"]["name"] == name]
    if rendered:
        return base64.b64decode(rendered[0]["data"][key])
    assert name in given and key in given[name], f"the test provides no Secret {name}/{key}"
    return given[name][key]
