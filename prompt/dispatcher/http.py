"""The dispatcher's HTTP side: /metrics for Prometheus, /healthz, /status."""

from __future__ import annotations

from collections import Counter
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from prompt.dispatcher.core import Dispatcher
from prompt.metrics import DispatcherMetrics


def status_snapshot(d: Dispatcher) -> dict[str, Any]:
    states = Counter(job.state.value for job in d.jobs.values())
    return {
        "visits_in_flight": [
            {
                "instrument": v.nv.instrument,
                "group": v.nv.group_id,
                "task": v.task.name,
                "open_jobs": v.open_jobs,
                "jobs": len(v.jobs),
                "preloaded": sum(1 for j in v.jobs.values() if j.preloaded is not None),
            }
            for v in d.visits.values()
        ],
        "jobs_by_state": dict(states),
        "ready_queue": len(d._ready),
        "held_images": sum(len(v) for v in d.held.values()),
        "pilots": [
            {
                "id": p.id,
                "host": p.host,
                "connected": p.connected,
                "slots": p.slots,
                "running": len(p.running),
                "draining": p.draining,
                "cache_entries": len(p.cache),
                "cache_stats": p.cache_stats,
            }
            for p in d.pilots.pilots.values()
        ],
    }


def make_app(d: Dispatcher, metrics: DispatcherMetrics, healthy: Any) -> web.Application:
    async def metrics_view(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health_view(_: web.Request) -> web.Response:
        ok = bool(healthy())
        return web.json_response({"ok": ok}, status=200 if ok else 503)

    async def status_view(_: web.Request) -> web.Response:
        return web.json_response(status_snapshot(d))

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", health_view)
    app.router.add_get("/status", status_view)
    return app
