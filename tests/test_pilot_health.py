"""The pilot's /healthz, /readyz and /metrics: what they report, and the same through a real
``prompt pilot`` process: cut off from any dispatcher, connected, a worker killed and replaced,
draining on SIGTERM while its jobs finish."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import psutil
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from prompt.config import Settings
from prompt.metrics import DispatcherMetrics
from prompt.metrics.pilot import PILOT_METRICS
from prompt.pilot.cache import CacheEntry, CacheKey, CalibrationCache
from prompt.pilot.health import PilotHealth, make_app
from prompt.stack.processes import free_port
from prompt.testing.processes import start_pilot
from prompt.testing.tasks import sleep_task_file
from prompt.testing.traffic import image_arrivals, next_visit_for
from tests.env import dispatcher_env, group_id

DISPATCHER_STATE_GAUGES = {"prompt_pilots", "prompt_pilot_slots", "prompt_pilot_slots_busy"}


class FakePool:
    def __init__(self, size: int, alive: int, idle: int) -> None:
        self.size, self._alive, self.idle, self.respawns = size, alive, idle, 0
        self.queued_behind = 0

    def alive(self) -> int:
        return self._alive


def fake_pilot(*, alive: int = 4, connected: bool = True, draining: bool = False) -> Any:
    event = asyncio.Event()
    if connected:
        event.set()
    cache = CalibrationCache(1 << 20)
    cache.put(CacheEntry(CacheKey("LSSTCam", 1, "r_57", "flat", "v"), 1000, None))
    return SimpleNamespace(
        pool=FakePool(4, alive, idle=1), cache=cache, connected=event, draining=draining,
        free_slots=1, queued=[], unacked={}, jobs_run=7,
        config=SimpleNamespace(pilot_id="p-1"),
    )  # fmt: skip


@contextlib.asynccontextmanager
async def client(pilot: Any, stop: asyncio.Event) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(make_app(PilotHealth(pilot, stop)))) as c:
        yield c


async def test_endpoints_report_workers_connection_and_drain() -> None:
    stop = asyncio.Event()
    async with client(fake_pilot(), stop) as c:
        resp = await c.get("/healthz")
        assert resp.status == 200 and (await resp.json())["workers_alive"] == 4
        assert (await c.get("/readyz")).status == 200
        stop.set()  # SIGTERM: alive, no longer ready
        resp = await c.get("/readyz")
        assert resp.status == 503 and (await resp.json())["draining"] is True
        assert (await c.get("/healthz")).status == 200
    async with client(fake_pilot(alive=3), asyncio.Event()) as c:
        resp = await c.get("/healthz")
        assert resp.status == 503 and (await resp.json()) == {
            "ok": False, "workers": 4, "workers_alive": 3,
        }  # fmt: skip
    async with client(fake_pilot(connected=False), asyncio.Event()) as c:
        resp = await c.get("/readyz")
        assert resp.status == 503 and (await resp.json())["connected"] is False
    async with client(fake_pilot(draining=True), asyncio.Event()) as c:  # told by the dispatcher
        assert (await c.get("/readyz")).status == 503
    async with client(fake_pilot(), asyncio.Event()) as c:
        scrape = metrics((await (await c.get("/metrics")).read()).decode())
    assert set(scrape) == set(PILOT_METRICS)
    assert scrape["prompt_pilot_workers_busy"] == 3  # 4 slots, 1 free
    assert scrape["prompt_pilot_cache_bytes"] == 1000 and scrape["prompt_pilot_cache_entries"] == 1
    assert scrape["prompt_pilot_jobs_run_total"] == 7 and scrape["prompt_pilot_connected"] == 1


def test_pilot_metric_names_do_not_collide_with_the_dispatchers() -> None:
    dispatcher = {s.name for f in DispatcherMetrics().registry.collect() for s in f.samples}
    assert not (set(PILOT_METRICS) | {n.removesuffix("_total") for n in PILOT_METRICS}) & (
        dispatcher | DISPATCHER_STATE_GAUGES
    )


def metrics(text: str) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


async def get(port: int, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=5)) as r,
    ):
        body = await r.json() if path != "/metrics" else metrics(await r.text())
        return r.status, body


async def until(check: Any, timeout: float = 30.0) -> Any:
    """Poll ``check()`` (a coroutine function) until it returns something true."""
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                if result := await check():
                    return result
            await asyncio.sleep(0.1)


def workers_of(pid: int) -> list[psutil.Process]:
    """The pilot's worker processes: the children of its fork server."""
    tree = psutil.Process(pid).children(recursive=True)
    servers = [p for p in tree if "forkserver" in " ".join(p.cmdline())]
    return [w for s in servers for w in s.children()]


@pytest.mark.stack
async def test_a_real_pilot_reports_health_readiness_and_drain(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    # No dispatcher listening: alive, not ready.
    lone_port = free_port()
    lone = start_pilot(
        isolated_settings.with_overrides(pilot_token=SecretStr("t")), free_port(), "lone",
        log_dir=tmp_path, extra_env={"PROMPT_PILOT_HTTP_PORT": str(lone_port)},
    )  # fmt: skip
    try:
        assert (await until(lambda: get(lone_port, "/healthz")))[0] == 200
        status, body = await get(lone_port, "/readyz")
        assert status == 503 and body["connected"] is False and body["draining"] is False
    finally:
        lone.stop_if_running()

    tasks = sleep_task_file(mean_s=3.0, detectors="0-1")
    async with dispatcher_env(isolated_settings, tasks, pilots=0) as env:
        port = free_port()
        pilot = start_pilot(
            env.settings, env.running.pilot_port, "p-health", slots=2, log_dir=tmp_path,
            extra_env={"PROMPT_PILOT_HTTP_PORT": str(port)},
        )  # fmt: skip
        try:

            async def ready() -> bool:
                return (await get(port, "/readyz"))[0] == 200

            await until(ready)
            status, body = await get(port, "/healthz")
            assert status == 200 and body == {"ok": True, "workers": 2, "workers_alive": 2}
            # A worker killed: replaced, and counted.
            workers_of(pilot.proc.pid)[0].kill()

            async def replaced() -> bool:  # and the replacement warm: both slots free
                _, m = await get(port, "/metrics")
                alive = (await get(port, "/healthz"))[1]["workers_alive"]
                warm = m["prompt_pilot_workers_busy"] == 0
                return bool(m["prompt_pilot_worker_respawns_total"] == 1 and alive == 2 and warm)

            await until(replaced)
            # Two jobs running, then SIGTERM: it drains (not ready, still alive), finishes both,
            # delivers their results and exits 0.
            nv = next_visit_for(group_id("health"), start_utc=time.time())
            await env.sender.next_visit(nv)
            await env.sender.images(image_arrivals(nv, range(2)))

            async def busy() -> bool:
                return bool((await get(port, "/metrics"))[1]["prompt_pilot_workers_busy"] == 2)

            await until(busy)
            pilot.proc.send_signal(signal.SIGTERM)

            async def draining() -> Any:
                status, body = await get(port, "/readyz")
                return status == 503 and body["draining"] and body

            assert (await until(draining))["connected"] is True
            assert (await get(port, "/healthz"))[0] == 200
            await env.completions.wait_for(2, timeout=30)
            assert await asyncio.to_thread(pilot.proc.wait, 30) == 0
        finally:
            pilot.stop_if_running()
    assert Counter(r["status"] for r in env.completions.records) == {"finished": 2}
    assert {r["pilot"] for r in env.completions.records} == {"p-health"}
