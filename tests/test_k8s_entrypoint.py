"""The image's entrypoint commands, run outside Docker: the set-up Job, a dispatcher and a pilot
start from exactly the argv (the Dockerfile's ENTRYPOINT, tini included, plus the container's
args) and the environment the rendered manifests give them, on the embedded stack; a visit
completes; SIGTERM drains them and they exit 0 within their grace periods.

Replaced, and only these: what points at in-cluster services or their credentials (the Kafka
bootstrap and its SASL/TLS settings, which the embedded broker does not speak; the schema
registry, which the stack has not; the database URL of the CloudNativePG Secret), the listening
ports (free ones: the machine is shared) and the pilots' dispatcher address; Secrets the
operators make are written by the test (tokens, the cert-manager certificate for the names in
the rendered Certificate). Topic names get a per-test suffix (one broker serves the session).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from prompt.calib.regions import region_of
from prompt.config import Settings, Topics
from prompt.instruments import raw_key
from prompt.kafka import ensure_topics
from prompt.metrics.pilot import PILOT_METRICS
from prompt.stack.processes import free_port
from prompt.testing.processes import ServiceProcess
from prompt.testing.traffic import CompletionCollector, EventSender, image_arrivals, next_visit_for
from tests.k8s import (
    OVERLAYS,
    ContainerRun,
    Manifests,
    container_env,
    container_run,
    containers,
    manifests,
    pod_spec,
)
from tests.test_k8s_manifests import KEDA_METRICS

pytestmark = pytest.mark.stack

REPLACED = {
    "PROMPT_KAFKA_BOOTSTRAP", "PROMPT_KAFKA_SECURITY_PROTOCOL", "PROMPT_KAFKA_SASL_MECHANISM",
    "PROMPT_KAFKA_SASL_USERNAME", "PROMPT_KAFKA_SASL_PASSWORD_FILE", "PROMPT_KAFKA_SSL_CAFILE",
    "PROMPT_SCHEMA_REGISTRY_URL", "PROMPT_DATABASE_URL", "PROMPT_HTTP_PORT", "PROMPT_PILOT_PORT",
    "PROMPT_PILOT_HTTP_PORT",
}  # fmt: skip
"""Every variable the test may change; all others reach the process as rendered."""
DAY_OBS = 20261123
DETECTORS = {"dev": [0, 1, 2, 3], "prod": [0, 94]}


def operator_secrets(m: Manifests, db_url: str) -> dict[str, dict[str, bytes]]:
    """What CloudNativePG, Strimzi, cert-manager and the operator of the service would make."""
    ca = trustme.CA()
    made: dict[str, dict[str, bytes]] = {
        "prompt-db-app": {"uri": db_url.encode()},
        "prompt": {"password": b"embedded-broker-has-no-sasl"},
        "prompt-pilot-token": {"token": secrets.token_hex(16).encode()},
        "prompt-operator-token": {"token": secrets.token_hex(16).encode()},
        "prompt-kafka-ca": {"ca.crt": ca.cert_pem.bytes()},
    }
    for cert in m.of_kind("Certificate"):
        if cert["spec"].get("isCA"):
            continue
        leaf = ca.issue_cert(*cert["spec"]["dnsNames"])
        made[cert["spec"]["secretName"]] = {
            "tls.crt": b"".join(p.bytes() for p in leaf.cert_chain_pems),
            "tls.key": leaf.private_key_pem.bytes(),
            "ca.crt": ca.cert_pem.bytes(),
        }
    return made


def in_test_env(run: ContainerRun, settings: Settings, ports: dict[str, int]) -> dict[str, str]:
    env = dict(run.env)
    for name in [n for n in env if n.startswith(("PROMPT_KAFKA_SASL_", "PROMPT_KAFKA_SSL_"))]:
        del env[name]  # the embedded broker: no SASL, no TLS
    env.pop("PROMPT_SCHEMA_REGISTRY_URL", None)
    env["PROMPT_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap or ""
    env["PROMPT_KAFKA_SECURITY_PROTOCOL"] = "PLAINTEXT"
    for name, port in ports.items():
        if name in env:
            env[name] = str(port)
    for field, topic in settings.topics.model_dump().items():
        env[f"PROMPT_TOPIC_{field.upper()}"] = topic
    changed = {n for n in set(env) | set(run.env) if env.get(n) != run.env.get(n)}
    assert changed - {f"PROMPT_TOPIC_{f.upper()}" for f in Topics.model_fields} <= REPLACED
    return env


@contextlib.contextmanager
def started(run: ContainerRun, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            run.argv, env=env, cwd=run.cwd, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


async def scrape(port: int) -> dict[str, float]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        text = await resp.text()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


async def status_of(port: int, path: str) -> int:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as r:
            return r.status
    except aiohttp.ClientError:
        return 0


@pytest.mark.parametrize("overlay", OVERLAYS)
async def test_manifest_commands_run_a_visit_and_drain(
    overlay: str, isolated_settings: Settings, tmp_path: Path
) -> None:
    m = manifests(overlay)
    tini = shutil.which("tini")
    assert tini, "tini is needed (`make system-deps` installs Debian's tini)"
    program = str(Path(sys.executable).parent / "prompt")
    rendered_topics = {
        f: container_env(m, pod_spec(m.component("dispatcher"))["containers"][0])[
            f"PROMPT_TOPIC_{f.upper()}"
        ]
        for f in Topics.model_fields
    }
    settings = isolated_settings.with_overrides(
        topics=Topics(**rendered_topics).suffixed(uuid.uuid4().hex[:8])
    )
    await ensure_topics(settings, settings.kafka_bootstrap or "")
    root = tmp_path / "pods"
    made = operator_secrets(m, settings.database_url or "")
    ports = {"PROMPT_PILOT_PORT": free_port(), "PROMPT_HTTP_PORT": free_port(),
             "PROMPT_PILOT_HTTP_PORT": free_port()}  # fmt: skip
    runs: dict[str, list[ContainerRun]] = {}
    for component in ("setup", "dispatcher", "pilot"):
        workload = m.component(component)
        runs[component] = [
            container_run(m, workload, c, root=root / component, secrets=made,
                          program=program, tini=tini)
            for c in containers(workload)
        ]  # fmt: skip
    [dispatcher], [pilot] = runs["dispatcher"], runs["pilot"]
    detectors = DETECTORS[overlay]
    uri_for = None
    region = region_of(150.0, -30.0)
    if "PROMPT_CALIB_ROOT" in pilot.env:  # prod: the calibration volume holds real data
        uri_for = simulate(Path(pilot.env["PROMPT_CALIB_ROOT"].removeprefix("file://")), detectors)
    # The pilots dial the leader's Service; here, the dispatcher's port on this machine.
    at = pilot.argv.index("--dispatcher") + 1
    assert pilot.argv[at] == "prompt-dispatcher-active:7070"
    pilot.argv[at] = f"127.0.0.1:{ports['PROMPT_PILOT_PORT']}"

    # The set-up Job: init container (db upgrade), then tasks apply; each must exit 0.
    for run in runs["setup"]:
        done = await asyncio.to_thread(
            subprocess.run,
            run.argv, env=in_test_env(run, settings, ports), cwd=run.cwd,
            capture_output=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, (run.argv, done.stdout.decode(), done.stderr.decode())
    assert b"lsstcam-" in done.stdout  # "<task>: created (version 1)"

    grace = {c: pod_spec(m.component(c))["terminationGracePeriodSeconds"]
             for c in ("dispatcher", "pilot")}  # fmt: skip
    logs = tmp_path / "logs"
    logs.mkdir()
    with (
        started(dispatcher, in_test_env(dispatcher, settings, ports), logs / "d.log") as dproc,
        started(pilot, in_test_env(pilot, settings, ports), logs / "p.log") as pproc,
    ):
        service = ServiceProcess(dproc, logs / "d.log", http_port=ports["PROMPT_HTTP_PORT"])
        await service.wait_ready(timeout=60)
        health_port = ports["PROMPT_PILOT_HTTP_PORT"]
        async with asyncio.timeout(60):
            while await status_of(health_port, "/readyz") != 200:
                assert pproc.poll() is None, (logs / "p.log").read_text()[-3000:]
                await asyncio.sleep(0.1)
        assert await status_of(health_port, "/healthz") == 200
        async with EventSender(settings) as sender, CompletionCollector(settings) as completions:
            night = f"{str(DAY_OBS)[:4]}-{str(DAY_OBS)[4:6]}-{str(DAY_OBS)[6:]}"
            nv = next_visit_for(f"{night}T23:00:01.{time.monotonic_ns() % 1000:03d}",
                                start_utc=time.time(), filters="r_57", ra=region.ra,
                                dec=region.dec)  # fmt: skip
            await sender.next_visit(nv)
            await sender.images(image_arrivals(nv, detectors, uri_for=uri_for))
            # Drain under load: SIGTERM the pilot while its jobs run.
            async with asyncio.timeout(60):
                while (await scrape(health_port))["prompt_pilot_workers_busy"] == 0:
                    await asyncio.sleep(0.05)
            pilot_metrics = await scrape(health_port)
            dispatcher_metrics = await scrape(ports["PROMPT_HTTP_PORT"])
            pproc.send_signal(signal.SIGTERM)  # to tini, which passes it on
            await completions.wait_for(len(detectors), timeout=90)
            assert await asyncio.to_thread(pproc.wait, grace["pilot"]) == 0
            records = completions.records
        dproc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(dproc.wait, grace["dispatcher"]) == 0

    assert Counter(r["status"] for r in records) == {"finished": len(detectors)}, records
    # prod's pilot channel is TLS (the cert-manager Secret's files), dev's plain TCP.
    registered = [json.loads(line) for line in (logs / "p.log").read_text().splitlines()
                  if '"registered with dispatcher"' in line]  # fmt: skip
    assert registered and registered[0]["tls"] is ("PROMPT_PILOT_TLS_CA" in pilot.env)
    assert registered[0]["tls"] is (overlay == "prod")
    assert sorted(r["detector"] for r in records) == detectors
    if overlay == "prod":  # the reference pipeline ran on the mounted calibrations
        assert all(r["counts"]["alerts"] > 0 for r in records)
        assert all(r["counts"]["calib_loads"] == 3 for r in records)
    # What KEDA queries and the pilots' own metrics, from the real processes.
    assert set(KEDA_METRICS) <= {n.partition("{")[0] for n in dispatcher_metrics}
    assert dispatcher_metrics["prompt_leader"] == 1
    assert set(PILOT_METRICS) <= set(pilot_metrics)
    assert pilot_metrics["prompt_pilot_workers"] == int(pilot.argv[pilot.argv.index("--slots") + 1])


def simulate(calib_root: Path, detectors: list[int]) -> Any:
    """Calibrations, templates and raws of one visit on the volume; the raws' file:// URIs."""
    from prompt.sim import SimConfig, SimVisit, generate

    region = region_of(150.0, -30.0)
    visit = SimVisit(DAY_OBS, 1, "g1", "r_57", region.ra, region.dec)
    generate(calib_root, [visit], detectors, SimConfig(seed=11), processes=1)
    return lambda d: f"file://{calib_root}/{raw_key('LSSTCam', DAY_OBS, 1, d)}"
