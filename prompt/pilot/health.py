"""The pilot's HTTP side, for Kubernetes probes and Prometheus: ``/healthz``, ``/readyz``,
``/metrics``. Served only when ``PROMPT_PILOT_HTTP_PORT`` is set.

- ``/healthz`` (liveness): the process answers and every warm worker process is alive. A
  wedged event loop cannot answer at all: the probe's timeout is that check.
- ``/readyz``: registered with a dispatcher and not draining. A pilot carries no Service
  traffic; readiness tells a rollout that the new pod took its place, and an operator which
  pilots are cut off from the dispatcher.
- ``/metrics``: slots, busy, queued, cache bytes and entries, jobs run
  (``prompt/metrics/pilot.py``).

No access log: probes every few seconds on every pilot pod would drown the job logs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from prompt.metrics.pilot import PilotCollector

if TYPE_CHECKING:
    from prompt.pilot.agent import Pilot

log = structlog.get_logger(__name__)


class PilotHealth:
    """What the probes report, read from the running pilot."""

    def __init__(self, pilot: Pilot, stop: asyncio.Event) -> None:
        self.pilot = pilot
        self.stop = stop

    def liveness(self) -> dict[str, Any]:
        pool = self.pilot.pool
        alive = pool.alive()
        return {"ok": alive == pool.size, "workers": pool.size, "workers_alive": alive}

    def readiness(self) -> dict[str, Any]:
        connected = self.pilot.connected.is_set()
        draining = self.pilot.draining or self.stop.is_set()
        return {"ready": connected and not draining, "connected": connected,
                "draining": draining, "pilot": self.pilot.config.pilot_id}  # fmt: skip


def make_app(health: PilotHealth) -> web.Application:
    registry = CollectorRegistry()
    registry.register(PilotCollector(health.pilot, health.stop))

    async def health_view(_: web.Request) -> web.Response:
        state = health.liveness()
        return web.json_response(state, status=200 if state["ok"] else 503)

    async def ready_view(_: web.Request) -> web.Response:
        state = health.readiness()
        return web.json_response(state, status=200 if state["ready"] else 503)

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/healthz", health_view)
    app.router.add_get("/readyz", ready_view)
    app.router.add_get("/metrics", metrics_view)
    return app


@contextlib.asynccontextmanager
async def pilot_http(
    pilot: Pilot, stop: asyncio.Event, host: str, port: int | None
) -> AsyncIterator[int | None]:
    """Serve the endpoints around the pilot's run; yields the bound port (None: not served)."""
    if port is None:
        yield None
        return
    runner = web.AppRunner(make_app(PilotHealth(pilot, stop)), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        log.info("pilot health endpoint listening", host=host, port=bound)
        yield bound
    finally:
        await runner.cleanup()
