"""``prompt serve``: the dispatcher process, from start to exit.

The HTTP side (``/healthz``, ``/readyz``, ``/metrics``, operator page) is up for the whole
process, so a standby is visible as healthy but not ready. The process then alternates between
waiting as a hot standby for the leader lock and leading for one term (``term.py``). A term that
loses the lock (a database restart drops it), is fenced, or outlives a dependency's retry
budget ends without writing anything more; the process goes back to standby and contends
again, so a database restart needs no process restart. Any other error is a bug: it ends the
process with a non-zero code for the supervisor to restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable

import asyncpg
import structlog
from aiohttp import web
from aiokafka.errors import KafkaError

from prompt.channel.tls import dispatcher_context
from prompt.config import Settings
from prompt.dispatcher.config import DispatcherConfig
from prompt.dispatcher.consumers import DependencyError
from prompt.dispatcher.engine import EngineConfig
from prompt.dispatcher.health import Health
from prompt.dispatcher.http import TermView, make_app
from prompt.dispatcher.leadership import Leadership
from prompt.dispatcher.term import LeadershipLostError, Running, TermContext, run_term
from prompt.dispatcher.writer import WriterGaveUpError
from prompt.events import make_registry
from prompt.metrics import DispatcherMetrics
from prompt.metrics.loop import LoopLagMonitor
from prompt.metrics.state import DispatcherStateCollector
from prompt.stack import resolve_endpoints
from prompt.store.errors import FencedError, is_transient

log = structlog.get_logger(__name__)

__all__ = ["Running", "dispatcher_config", "serve"]

SCHEDULING = {"warm": "push", "cold": "poll"}
"""PROMPT_DISPATCH_MODE -> the engine's scheduling."""


def dispatcher_config(settings: Settings) -> DispatcherConfig:
    """Raises ValueError (TLSConfigError for TLS files) naming the setting that is wrong."""
    if settings.pilot_token is None or not settings.pilot_token.get_secret_value():
        raise ValueError(
            "PROMPT_PILOT_TOKEN (or PROMPT_PILOT_TOKEN_FILE) must be set: pilots authenticate "
            "with it"
        )
    operator = settings.operator_token
    return DispatcherConfig(
        name=settings.dispatcher_name,
        token=settings.pilot_token.get_secret_value(),
        operator_token=operator.get_secret_value() if operator is not None else "",
        pilot_tls=dispatcher_context(settings),
        engine=EngineConfig(
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
            heartbeat_s=settings.heartbeat_timeout_s / 4,
            affinity_wait_s=settings.affinity_wait_s,
            poll_s=settings.poll_s,
            dispatch_order=settings.dispatch_order,
            backlog_per_pilot=settings.backlog_per_pilot,
        ),
        scheduling=SCHEDULING[settings.dispatch_mode],
        drain_timeout_s=settings.drain_timeout_s,
        start_from=settings.start_from,
        dependency_retry_s=settings.dependency_retry_s,
    )


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[Running], None] | None = None,
) -> None:
    config = dispatcher_config(settings)
    endpoints = resolve_endpoints(settings)
    registry = make_registry(settings.schema_registry_url)
    metrics = DispatcherMetrics()
    health = Health(stall_after_s=settings.stall_after_s)
    view = TermView()
    metrics.registry.register(DispatcherStateCollector(view, health))
    runner = web.AppRunner(make_app(view, metrics, health, config.operator_token))
    await runner.setup()
    loop_lag = asyncio.get_running_loop().create_task(
        LoopLagMonitor(metrics.registry).run(), name="loop-lag"
    )
    try:
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        http_port = runner.addresses[0][1] if runner.addresses else None
        ctx = TermContext(
            settings, config, endpoints, registry, metrics, health, http_port, settings.pilot_port
        )
        leadership = Leadership(
            endpoints.database_url, config.name, holder=f"{socket.gethostname()}:{os.getpid()}"
        )

        def on_running(running: Running | None) -> None:
            view.running = running
            if running is not None and on_ready is not None:
                on_ready(running)

        while not stop.is_set():
            health.end_term("standby")
            fence = await leadership.acquire(stop)
            if fence is None:
                break
            metrics.terms.inc()
            health.start_term(fence.epoch)
            try:
                await run_term(ctx, leadership, fence, stop, on_running)
            except* (LeadershipLostError, FencedError) as group:
                metrics.leadership_lost.inc()
                log.error("term ended: leadership lost; contending again",
                          reason=_first(group))  # fmt: skip
            except* (DependencyError, WriterGaveUpError, KafkaError, OSError) as group:
                log.error("term ended: a dependency is unreachable; contending again",
                          reason=_first(group))  # fmt: skip
            except* (
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,
            ) as group:
                if not all(is_transient(e) for e in _leaves(group)):
                    raise  # refused statements at start-up are a bug or a schema problem
                log.error("term ended: database error; contending again", reason=_first(group))
            finally:
                await leadership.release()
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
        health.end_term("stopped")
    finally:
        loop_lag.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop_lag
        await runner.cleanup()
        await registry.close()


def _first(group: BaseExceptionGroup[BaseException]) -> str:
    leaves = list(_leaves(group))
    return repr(leaves[0]) if leaves else repr(group)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
