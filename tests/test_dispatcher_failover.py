"""Two ``prompt serve`` processes under one PROMPT_DISPATCHER_NAME, as the Deployment runs them,
seen through what Kubernetes probes: exactly one is ready (/readyz 200), both are alive
(/healthz 200); kill -9 the ready one and the other is ready within 5 s."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from prompt.config import Settings
from prompt.testing.processes import ServiceProcess, start_dispatcher
from tests.env import service_settings

pytestmark = pytest.mark.stack

TAKEOVER_S = 5.0


async def probe(service: ServiceProcess, path: str) -> tuple[int, dict[str, object]]:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
            http.get(f"http://127.0.0.1:{service.http_port}{path}") as resp,
        ):
            return resp.status, await resp.json()
    except (aiohttp.ClientError, TimeoutError):
        return 0, {}


async def readiness(services: list[ServiceProcess]) -> list[int]:
    return [status for status, _ in await asyncio.gather(*(probe(s, "/readyz") for s in services))]


async def test_one_of_two_is_ready_and_the_standby_takes_over_within_5_s(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    settings = service_settings(isolated_settings, dispatcher_name="lsstcam")
    services = [start_dispatcher(settings, log_dir=tmp_path / f"d{i}") for i in range(2)]
    try:
        async with asyncio.timeout(60):  # one leads, the other has reached standby
            while True:
                states = await asyncio.gather(*(probe(s, "/readyz") for s in services))
                roles = sorted(str(body.get("role")) for _, body in states)
                if sorted(s for s, _ in states) == [200, 503] and roles == ["leader", "standby"]:
                    break
                await asyncio.sleep(0.1)
        # Steadily so: over 2 s of probes, never both ready, never none.
        for _ in range(20):
            assert sorted(await readiness(services)) == [200, 503]
            await asyncio.sleep(0.1)
        for service in services:
            status, body = await probe(service, "/healthz")
            assert status == 200 and body["ok"] is True
        leader, standby = await _by_readiness(services)

        killed = time.monotonic()
        leader.kill()  # SIGKILL to its process group: no release, no goodbye
        async with asyncio.timeout(30):
            while (await probe(standby, "/readyz"))[0] != 200:
                await asyncio.sleep(0.05)
        took = time.monotonic() - killed
        print(f"standby ready {took:.2f} s after kill -9 of the leader")
        assert took < TAKEOVER_S, f"took {took:.2f} s"
        status, body = await probe(standby, "/readyz")
        assert body["role"] == "leader" and body["stalled"] == {}
    finally:
        for service in services:
            service.stop_if_running()


async def _by_readiness(services: list[ServiceProcess]) -> tuple[ServiceProcess, ServiceProcess]:
    first, _ = await readiness(services)
    return (services[0], services[1]) if first == 200 else (services[1], services[0])
