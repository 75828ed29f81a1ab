"""The Kubernetes manifests render, validate, and agree with the code: every port, probe path,
PROMPT_* variable, command, secret, topic and metric they name exists. The container image's
Dockerfile is checked by reading it (there is no Docker engine here to build it)."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from aiohttp import web

from prompt.cli.main import build_parser
from prompt.config import S3Settings, Settings, Topics
from prompt.dispatcher.engine import JobState
from prompt.dispatcher.health import Health
from prompt.dispatcher.http import TermView, make_app
from prompt.metrics import DispatcherMetrics
from prompt.pilot.health import PilotHealth
from prompt.pilot.health import make_app as pilot_app
from prompt.tasks import TaskFile
from tests.k8s import (
    COMPONENT,
    EXTERNAL_SECRETS,
    K8S,
    OVERLAYS,
    ROOT,
    Manifests,
    container_env,
    containers,
    dockerfile_stages,
    exec_form,
    manifests,
    pod_labels,
    pod_spec,
    rendered_text,
    selects,
)
from tests.k8s_schemas import CUSTOM, CUSTOM_KINDS

# Oldest Kubernetes the manifests are written for (PodDisruptionBudget's
# unhealthyPodEvictionPolicy is on by default from 1.27, GA in 1.31), and the newest schema
# kubernetes-validate has.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
OBSERVATORY_TOPICS = {"next_visit", "next_visit_canceled"}
"""Owned by Sasquatch in production (mirrored to the data facility's Kafka), not by prompt."""
SETTING_OF_PORT = {
    "dispatcher": {"pilot": "pilot_port", "http": "http_port"},
    "pilot": {"health": "pilot_http_port"},
}
"""Container port name -> the setting that makes the process listen there."""
DELIVERY_MARGIN_S = 30
"""After a pilot's last job times out: alert delivery, result sent and acknowledged."""
PILOT_STOP_S = 10
"""After a pilot's drain timeout: its workers killed, its producer and connection closed."""


@pytest.fixture(params=OVERLAYS)
def m(request: pytest.FixtureRequest) -> Manifests:
    return manifests(request.param)


def setting_variables() -> set[str]:
    """Every environment variable the settings read."""
    names: set[str] = set()
    for model, prefix in (
        (Settings, "PROMPT_"),
        (Topics, "PROMPT_TOPIC_"),
        (S3Settings, "PROMPT_S3_"),
    ):
        for name, info in model.model_fields.items():
            if info.annotation in (Topics, S3Settings):
                continue
            names.add(f"{prefix}{name.upper()}")
            if "SecretStr" in str(info.annotation):
                names.add(f"{prefix}{name.upper()}_FILE")
    return names


# ---- rendering and validation -------------------------------------------------------------


def test_overlays_render_with_their_namespace(m: Manifests) -> None:
    assert m.namespace == {"dev": "prompt-dev", "prod": "prompt"}[m.overlay]
    for doc in m.docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == m.namespace, doc["metadata"]["name"]
    kinds = {d["kind"] for d in m.docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "Job", "ConfigMap"} <= kinds
    assert CUSTOM_KINDS - {"Certificate", "Issuer"} <= kinds  # prod alone has TLS


def test_core_kinds_validate_strictly(m: Manifests) -> None:
    checked = set()
    for doc in m.docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM:
            continue
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
        checked.add(doc["kind"])
    assert {"Deployment", "Service", "Job", "PodDisruptionBudget", "NetworkPolicy"} <= checked
    # The validator does reject what Kubernetes would: a misspelt field, a wrong type.
    deployment = copy.deepcopy(m.component("pilot"))
    pod_spec(deployment)["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)
    pod_spec(deployment)["containers"][0].pop("resource")
    pod_spec(deployment)["terminationGracePeriodSeconds"] = "90"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_custom_resources_have_the_fields_their_operators_document(m: Manifests) -> None:
    seen = set()
    for doc in m.docs:
        schema = CUSTOM.get((doc["apiVersion"], doc["kind"]))
        if schema is None:
            assert "." not in doc["apiVersion"].split("/")[0] or doc["apiVersion"].split("/")[
                0
            ].endswith("k8s.io"), f"no schema for {doc['apiVersion']} {doc['kind']}"
            continue
        jsonschema.validate(doc, schema)
        seen.add(doc["kind"])
    assert seen == {d["kind"] for d in m.docs} & CUSTOM_KINDS
    assert CUSTOM_KINDS - {"Certificate", "Issuer"} <= seen
    # The schemas reject what the operators would.
    scaled = copy.deepcopy(m.get("ScaledObject", "prompt-pilot"))
    scaled["spec"]["triggers"][1]["metadata"]["threshold"] = 4  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, CUSTOM[("keda.sh/v1alpha1", "ScaledObject")])
    topic = copy.deepcopy(m.of_kind("KafkaTopic")[0])
    del topic["metadata"]["labels"]["strimzi.io/cluster"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(topic, CUSTOM[("kafka.strimzi.io/v1beta2", "KafkaTopic")])
    # The HPA behaviour KEDA passes on is a real autoscaling/v2 behaviour.
    behavior = m.get("ScaledObject", "prompt-pilot")["spec"]["advanced"][
        "horizontalPodAutoscalerConfig"
    ]["behavior"]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "x"},
        "spec": {
            "scaleTargetRef": {"kind": "Deployment", "name": "prompt-pilot"},
            "maxReplicas": 2,
            "behavior": behavior,
        },
    }
    kubernetes_validate.validate(hpa, KUBERNETES_VERSIONS[0], strict=True)


def test_generated_monitoring_resources_match_their_sources() -> None:
    done = subprocess.run(
        [sys.executable, str(K8S / "sync.py"), "--check"], capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    for overlay in OVERLAYS:
        rule = manifests(overlay).get("PrometheusRule", "prompt")
        assert rule["spec"]["groups"] == rules["groups"]


# ---- the manifests against the code ------------------------------------------------------


def test_every_prompt_variable_is_a_setting_and_parses(
    m: Manifests, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    known = setting_variables()
    for workload in m.workloads():
        for container in containers(workload):
            env = container_env(m, container)
            names = {n for n in env if n.startswith("PROMPT_")}
            assert names, container["name"]
            assert not names - known, f"{container['name']}: not settings: {names - known}"
            with monkeypatch.context() as env_of_pod:
                for var in [v for v in os.environ if v.startswith("PROMPT_")]:
                    env_of_pod.delenv(var)
                for name, value in env.items():
                    if not isinstance(value, str):  # from a Secret: a value of the right kind
                        value = "postgresql://u@db:5432/prompt"
                    if name.endswith("_FILE"):
                        secret = tmp_path / name
                        secret.write_text("s3cret")
                        value = str(secret)
                    env_of_pod.setenv(name, value)
                Settings()  # types and ranges (ports, enums) hold


def test_container_commands_are_prompt_commands(m: Manifests) -> None:
    [image] = [s for s in dockerfile_stages() if s.name == "runtime"]
    entrypoint = exec_form(image.all("ENTRYPOINT")[0])
    assert entrypoint[-1] == "prompt"
    parser = build_parser()
    commands = set()
    for workload in m.workloads():
        for container in containers(workload):
            assert "command" not in container, "the image's entrypoint (tini -- prompt) stays"
            args = parser.parse_args(container["args"])
            commands.add((args.command, getattr(args, "action", None)))
            if args.command == "tasks":
                mounted = mounted_files(m, workload, container)
                text = mounted[str(args.file)]
                TaskFile.model_validate(yaml.safe_load(text))
    assert commands == {("serve", None), ("pilot", None), ("db", "upgrade"), ("tasks", "apply")}


def mounted_files(
    m: Manifests, workload: dict[str, Any], container: dict[str, Any]
) -> dict[str, str]:
    """Path -> content of files a container sees from ConfigMap volumes."""
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    files = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            data = m.get("ConfigMap", volume["configMap"]["name"])["data"]
            for key, text in data.items():
                files[f"{mount['mountPath']}/{key}"] = text
    return files


def test_ports_probes_and_services_line_up(m: Manifests) -> None:
    dispatcher_paths = routes(make_app(TermView(), DispatcherMetrics(), Health()))
    stub = SimpleNamespace(pool=None, cache=None, config=None)
    pilot_paths = routes(pilot_app(PilotHealth(stub, None)))  # type: ignore[arg-type]
    paths = {"dispatcher": dispatcher_paths, "pilot": pilot_paths}
    for component in ("dispatcher", "pilot"):
        workload = m.component(component)
        [container] = pod_spec(workload)["containers"]
        env = container_env(m, container)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert set(ports) == set(SETTING_OF_PORT[component])
        for name, setting in SETTING_OF_PORT[component].items():
            variable = f"PROMPT_{setting.upper()}"
            assert int(env[variable]) == ports[name], f"{component}: {variable} vs port {name}"
        # It listens on every interface of the pod, not on loopback.
        for host in ("PROMPT_HTTP_HOST", "PROMPT_PILOT_HOST", "PROMPT_PILOT_HTTP_HOST"):
            if host.replace("HOST", "PORT") in env:
                assert env[host] == "0.0.0.0"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = container[probe]["httpGet"]
            assert get["port"] in ports, f"{component} {probe}: no port {get['port']}"
            assert get["path"] in paths[component], f"{component} {probe}: {get['path']}"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    pods = {c: (pod_labels(m.component(c)), pod_spec(m.component(c))) for c in paths}
    for service in m.of_kind("Service"):
        matched = [
            c for c, (labels, _) in pods.items() if selects(service["spec"]["selector"], labels)
        ]
        assert len(matched) == 1, service["metadata"]["name"]
        names = {p["name"] for c in pods[matched[0]][1]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, (service["metadata"]["name"], port)
    for monitor in m.of_kind("ServiceMonitor"):
        targets = [
            s
            for s in m.of_kind("Service")
            if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))
        ]
        assert len(targets) == 1, monitor["metadata"]["name"]
        [target] = targets
        assert target["spec"].get("publishNotReadyAddresses"), "standbys and drains scraped too"
        service_ports = {p["name"] for p in target["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in service_ports
            assert (
                endpoint["path"] == "/metrics"
                and "/metrics"
                in paths[
                    pod_labels(m.component(target["metadata"]["labels"][COMPONENT]))[COMPONENT]
                ]
            )
    for policy in m.of_kind("NetworkPolicy"):
        [component] = [
            c
            for c, (labels, _) in pods.items()
            if selects(policy["spec"]["podSelector"]["matchLabels"], labels)
        ]
        names = {p["name"] for c in pods[component][1]["containers"] for p in c["ports"]}
        for rule in policy["spec"]["ingress"]:
            assert {p["port"] for p in rule["ports"]} <= names


def routes(app: web.Application) -> set[str]:
    return {r.canonical for r in app.router.resources()}


def test_pilots_dial_the_leaders_service(m: Manifests) -> None:
    pilot = pod_spec(m.component("pilot"))["containers"][0]["args"]
    host, _, port = pilot[pilot.index("--dispatcher") + 1].rpartition(":")
    service = m.get("Service", host)
    assert "clusterIP" not in service["spec"] and not service["spec"].get(
        "publishNotReadyAddresses"
    ), "only ready pods (the leader) behind the pilots' address"
    [target] = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
    assert target["targetPort"] == "pilot"
    assert selects(service["spec"]["selector"], pod_labels(m.component("dispatcher")))
    env = container_env(m, pod_spec(m.component("pilot"))["containers"][0])
    if "PROMPT_PILOT_TLS_CA" in env:  # the name checked is in the dispatcher's certificate
        [cert] = [c for c in m.of_kind("Certificate") if not c["spec"].get("isCA")]
        assert env["PROMPT_PILOT_TLS_SERVER_NAME"] in cert["spec"]["dnsNames"]
        assert f"{host}.{m.namespace}.svc" in cert["spec"]["dnsNames"]
        dispatcher_env = container_env(m, pod_spec(m.component("dispatcher"))["containers"][0])
        assert "PROMPT_PILOT_TLS_CERT" in dispatcher_env


def test_every_secret_and_file_a_pod_reads_exists(m: Manifests) -> None:
    secrets = m.secret_keys()
    for workload in m.workloads():
        spec = pod_spec(workload)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in containers(workload):
            for name, value in container_env(m, container).items():
                if isinstance(value, dict):
                    ref = value["secretKeyRef"]
                    assert ref["key"] in secrets[ref["name"]], (name, ref)
            files: set[str] = set()
            for mount in container.get("volumeMounts", []):
                volume = volumes[mount["name"]]
                for secret, items in secret_items(volume):
                    assert secret in secrets, f"{workload['metadata']['name']}: no {secret}"
                    for key, path in items:
                        assert key in secrets[secret], (secret, key)
                        files.add(f"{mount['mountPath']}/{path}")
                if "configMap" in volume:
                    data = m.get("ConfigMap", volume["configMap"]["name"])["data"]
                    files |= {f"{mount['mountPath']}/{k}" for k in data}
            env = container_env(m, container)
            for name, value in env.items():
                if name.endswith(("_FILE", "_CAFILE", "_CERT", "_KEY", "_CA")):
                    assert value in files, f"{container['name']}: {name}={value} not mounted"
            for name in ("PROMPT_CALIB_ROOT",):
                if name in env:
                    root = env[name].removeprefix("file://")
                    mounts = [mt["mountPath"] for mt in container["volumeMounts"]]
                    assert any(root.startswith(p + "/") for p in mounts), f"{name} not mounted"
    # The external secrets of the prod overlay are the ones its kustomization documents.
    text = (K8S / "overlays" / "prod" / "kustomization.yaml").read_text()
    for name in EXTERNAL_SECRETS["prod"]:
        assert name in text


def secret_items(volume: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    out = []
    sources = [s["secret"] for s in volume.get("projected", {}).get("sources", [])]
    if "secret" in volume:
        sources.append({"name": volume["secret"]["secretName"], **volume["secret"]})
    for source in sources:
        items = [(i["key"], i["path"]) for i in source.get("items", [])]
        assert items, "list the keys: a whole Secret would mount keys nobody reads"
        out.append((source["name"], items))
    return out


def test_grace_periods_cover_drain_and_job_timeouts(m: Manifests) -> None:
    setup = m.component("setup")
    [tasks_container] = pod_spec(setup)["containers"]
    text = mounted_files(m, setup, tasks_container)[tasks_container["args"][-1]]
    longest = max(t.job_timeout_s for t in TaskFile.model_validate(yaml.safe_load(text)).tasks)
    pilot = pod_spec(m.component("pilot"))
    assert pilot["terminationGracePeriodSeconds"] >= longest + DELIVERY_MARGIN_S
    # A pilot that cannot finish its drain (its dispatcher gone, a job hung) gives up on its
    # own, after the longest job could have run, and exits before the kubelet kills it.
    args = pilot["containers"][0]["args"]
    pilot_drain = float(args[args.index("--drain-timeout-s") + 1])
    assert longest < pilot_drain <= pilot["terminationGracePeriodSeconds"] - PILOT_STOP_S
    dispatcher = pod_spec(m.component("dispatcher"))
    drain = float(container_env(m, dispatcher["containers"][0])["PROMPT_DRAIN_TIMEOUT_S"])
    assert dispatcher["terminationGracePeriodSeconds"] >= drain + 10


def test_dispatcher_pair_and_its_disruption_budget(m: Manifests) -> None:
    deployment = m.component("dispatcher")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == "100%"
    pdb = m.get("PodDisruptionBudget", "prompt-dispatcher")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(deployment))
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert "replicas" not in m.component("pilot")["spec"], "KEDA owns the pilot count"


def test_keda_scales_pilots_on_exported_work(m: Manifests) -> None:
    scaled = m.get("ScaledObject", "prompt-pilot")
    assert scaled["spec"]["scaleTargetRef"]["name"] == m.component("pilot")["metadata"]["name"]
    [prom] = [t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]
    args = pod_spec(m.component("pilot"))["containers"][0]["args"]
    assert prom["metadata"]["threshold"] == args[args.index("--slots") + 1]
    query = prom["metadata"]["query"]
    selectors = re.findall(r"\b(prompt_[a-z_]+)\{([^}]*)\}", query)
    assert {name for name, _ in selectors} == set(KEDA_METRICS)
    for _, labels in selectors:
        assert f'namespace="{m.namespace}"' in labels
        assert 'job="prompt-dispatcher"' in labels
    states = re.search(r'state=~"([^"]+)"', query)
    assert states and set(states.group(1).split("|")) <= {s.value for s in JobState}
    assert set(states.group(1).split("|")) == {"defined", "assigned", "preloading"}
    # The dispatcher's metrics Service is that job; the rules use the same job name.
    assert m.get("Service", "prompt-dispatcher")["spec"]["clusterIP"] == "None"
    assert 'up{job="prompt-dispatcher"}' in rendered_text(m.overlay)
    assert scaled["spec"]["fallback"]["replicas"] >= scaled["spec"]["minReplicaCount"]


KEDA_METRICS = ("prompt_pilot_slots_busy", "prompt_ready_queue", "prompt_jobs")
"""What the KEDA query reads; tests/test_k8s_entrypoint.py scrapes them from a dispatcher."""


def test_topics_and_acls_cover_every_topic_setting(m: Manifests) -> None:
    env = m.find("ConfigMap", "prompt-config")["data"]
    topics = {f: env[f"PROMPT_TOPIC_{f.upper()}"] for f in Topics.model_fields}
    created = {t["spec"]["topicName"] for t in m.of_kind("KafkaTopic")}
    owned = set(topics) - (OBSERVATORY_TOPICS if m.overlay == "prod" else set())
    assert {topics[f] for f in owned} == created
    [user] = m.of_kind("KafkaUser")
    assert env["PROMPT_KAFKA_SASL_USERNAME"] == user["metadata"]["name"]
    acls = {
        a["resource"]["name"]: set(a["operations"]) for a in user["spec"]["authorization"]["acls"]
    }
    for field in ("next_visit", "next_visit_canceled", "image_arrival"):
        assert {"Read", "Describe"} <= acls[topics[field]]
    for field in ("completion", "alerts", "dead_letter"):
        assert {"Write", "Describe"} <= acls[topics[field]]
    assert "Read" in acls[topics["completion"]], "the outbox reads back after a crash"
    clusters = {t["metadata"]["labels"]["strimzi.io/cluster"] for t in m.of_kind("KafkaTopic")}
    assert clusters == {user["metadata"]["labels"]["strimzi.io/cluster"]}
    bootstrap = env["PROMPT_KAFKA_BOOTSTRAP"]
    assert bootstrap.startswith(f"{next(iter(clusters))}-kafka-bootstrap.")
    protocol = env["PROMPT_KAFKA_SECURITY_PROTOCOL"]
    assert bootstrap.endswith(":9093" if protocol == "SASL_SSL" else ":9092")
