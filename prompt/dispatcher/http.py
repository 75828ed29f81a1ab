"""The dispatcher's HTTP side: /metrics for Prometheus, /healthz, /readyz, /status, the
operator page. Up for the whole process; what it shows comes from the current term, if any.

Job output and error texts (/jobs/{id}/log, /ui/stream, /ui/snapshot) need the operator token
(``auth.py``); the rest carries counts and names only, like /metrics, and stays open."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from prompt.dispatcher.auth import require_token
from prompt.dispatcher.engine import Engine, Snapshot
from prompt.dispatcher.health import Health
from prompt.metrics import DispatcherMetrics

if TYPE_CHECKING:
    from prompt.dispatcher.term import Running


class TermView:
    """The running term (None while standing by): what the HTTP side and metrics read."""

    def __init__(self) -> None:
        self.running: Running | None = None

    def snapshot(self) -> Snapshot | None:
        """The read model of the term's state (built on each call)."""
        return None if self.running is None else self.running.engine.snapshot()


def _json(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)


OPERATOR_PAGE = Path(__file__).with_name("operator.html")
STREAM_INTERVAL_S = 1.0
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache, no-store",
    "X-Accel-Buffering": "no",  # nginx (and ingresses built on it): pass events on at once
    "Connection": "keep-alive",
}


def make_app(
    view: TermView, metrics: DispatcherMetrics, health: Health, operator_token: str = ""
) -> web.Application:
    closing = asyncio.Event()
    operator = require_token(operator_token)
    page = OPERATOR_PAGE.read_bytes()  # read once, at start-up

    def leading() -> Running:
        running = view.running
        if running is None:
            raise web.HTTPServiceUnavailable(
                text=orjson.dumps({"role": health.role, "error": "not the leader"}).decode(),
                content_type="application/json",
            )
        return running

    async def root_view(_: web.Request) -> web.Response:
        raise web.HTTPFound("/ui")

    async def ui_view(_: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8")

    async def snapshot_view(_: web.Request) -> web.Response:
        snap = leading().engine.snapshot()
        return web.Response(body=_json(snap.to_json(with_errors=True)),
                            content_type="application/json")  # fmt: skip

    async def stream_view(request: web.Request) -> web.StreamResponse:
        """Server-sent events: one snapshot a second until the client or the service goes."""
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        try:
            while not closing.is_set():
                snap = view.snapshot()
                doc = {"role": health.role} if snap is None else snap.to_json(with_errors=True)
                await resp.write(b"data: " + _json(doc) + b"\n\n")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closing.wait(), STREAM_INTERVAL_S)
        except (ConnectionResetError, ConnectionError):
            pass
        return resp

    async def log_view(request: web.Request) -> web.Response:
        job_id = int(request.match_info["job"])
        running = leading()
        text = await job_log(running.engine, running.runtime.pool, job_id)
        if text is None:
            raise web.HTTPNotFound(text=f"no job {job_id}")
        return web.Response(text=text or "(no output)", content_type="text/plain")

    async def on_shutdown(_: web.Application) -> None:
        closing.set()

    async def metrics_view(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health_view(_: web.Request) -> web.Response:
        """Liveness: the process answers (its event loop runs). A standby is healthy."""
        return web.json_response({"ok": True, "role": health.role})

    async def ready_view(_: web.Request) -> web.Response:
        """Readiness: the leader, holding the lock, every part making progress."""
        state = health.readiness()
        return web.json_response(state, status=200 if state["ready"] else 503)

    async def status_view(_: web.Request) -> web.Response:
        snap = leading().engine.snapshot()
        return web.Response(body=_json(snap.to_json(with_errors=False)),
                            content_type="application/json")  # fmt: skip

    app = web.Application()
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/", root_view)
    app.router.add_get("/ui", ui_view)
    app.router.add_get("/ui/snapshot", operator(snapshot_view))
    app.router.add_get("/ui/stream", operator(stream_view))
    app.router.add_get("/jobs/{job:\\d+}/log", operator(log_view))
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", health_view)
    app.router.add_get("/readyz", ready_view)
    app.router.add_get("/status", status_view)
    return app


async def job_log(engine: Engine, pool: asyncpg.Pool, job_id: int) -> str | None:
    """The payload's output (bounded) for a job: from memory if open, else from the database."""
    log = engine.job_log(job_id)
    if log is not None:
        return log
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT result FROM jobs WHERE id = $1", job_id)
    if row is None:
        return None
    return str((row["result"] or {}).get("log", ""))
