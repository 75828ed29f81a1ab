"""``prompt serve``: wire the dispatcher together and run it until told to stop.

Lifecycle (after Temporal's worker): take the leader lock (else wait as a hot standby), recover
state, open the pilot channel, start intake; on stop: stop intake, drain jobs running on pilots
(with a timeout), commit state and offsets, publish pending completions, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import structlog
from aiohttp import web
from aiokafka import AIOKafkaProducer

from prompt.config import Settings
from prompt.dispatcher.config import DispatcherConfig
from prompt.dispatcher.core import Dispatcher
from prompt.dispatcher.http import make_app
from prompt.dispatcher.intake import DeadLetters, Intake
from prompt.dispatcher.outbox import CompletionPublisher
from prompt.dispatcher.pilot_server import PilotServer
from prompt.dispatcher.recovery import recover_state
from prompt.dispatcher.writer import StateWriter
from prompt.events import AvroCodec, EventKind, make_registry
from prompt.events.raw_metadata import RawMetadataResolver
from prompt.kafka import aiokafka_options, consumer_options
from prompt.metrics import DispatcherMetrics
from prompt.metrics.loop import LoopLagMonitor
from prompt.metrics.state import DispatcherStateCollector
from prompt.runtime import freeze_startup_objects
from prompt.stack import resolve_endpoints
from prompt.store import create_pool
from prompt.tasks import load_active_tasks

log = structlog.get_logger(__name__)


@dataclass
class Running:
    """Handles on a running dispatcher, for the CLI, tests and benchmarks."""

    dispatcher: Dispatcher
    metrics: DispatcherMetrics
    writer: StateWriter
    publisher: CompletionPublisher
    pilot_port: int
    http_port: int | None
    dead_letters: DeadLetters


def dispatcher_config(settings: Settings) -> DispatcherConfig:
    if settings.pilot_token is None or not settings.pilot_token.get_secret_value():
        raise ValueError("PROMPT_PILOT_TOKEN must be set: pilots authenticate with it")
    return DispatcherConfig(
        name=settings.dispatcher_name,
        token=settings.pilot_token.get_secret_value(),
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
        drain_timeout_s=settings.drain_timeout_s,
        start_from=settings.start_from,
        mode=settings.dispatch_mode,
        affinity_wait_s=settings.affinity_wait_s,
    )


async def _take_leadership(conn: asyncpg.Connection, name: str, stop: asyncio.Event) -> bool:
    key = zlib.crc32(f"prompt-dispatcher:{name}".encode())
    announced = False
    while not stop.is_set():
        if await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
            return True
        if not announced:
            log.info("another dispatcher is active; waiting as standby", name=name)
            announced = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    return False


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[Running], None] | None = None,
) -> None:
    config = dispatcher_config(settings)
    endpoints = resolve_endpoints(settings)
    kafka_opts = aiokafka_options(settings, endpoints.kafka_bootstrap)
    pool = await create_pool(endpoints.database_url, min_size=2, max_size=8)
    registry = make_registry(settings.schema_registry_url)
    producer = AIOKafkaProducer(**kafka_opts, acks="all", linger_ms=1, enable_idempotence=False)
    runner: web.AppRunner | None = None
    intake: Intake | None = None
    server: PilotServer | None = None
    leader: asyncpg.Connection | None = None
    try:
        leader = await pool.acquire()
        if not await _take_leadership(leader, config.name, stop):
            return
        await producer.start()
        topics = settings.topics
        codecs = {
            "next-visit": AvroCodec(EventKind.NEXT_VISIT, registry),
            "next-visit-canceled": AvroCodec(EventKind.NEXT_VISIT_CANCELED, registry),
            "image-arrival": AvroCodec(EventKind.IMAGE_ARRIVAL, registry),
        }
        completion_codec = await AvroCodec.for_topic(
            EventKind.COMPLETION, registry, topics.completion
        )
        metrics = DispatcherMetrics()
        publisher = CompletionPublisher(
            pool, producer, topics.completion, f"{config.name}:outbox",
            on_published=metrics.completions_published.inc,
        )  # fmt: skip
        writer = StateWriter(
            pool, config.name, publisher.committed,
            observe_commit=lambda s, _n: metrics.commit.observe(s),
        )  # fmt: skip
        tasks = await load_active_tasks(leader)
        dispatcher = Dispatcher(config, pool, writer, completion_codec, metrics, tasks)
        await recover_state(dispatcher, leader)
        await publisher.recover(kafka_opts)

        reloads: set[asyncio.Task[None]] = set()

        async def reload_tasks() -> None:
            async with pool.acquire() as conn:
                dispatcher.tasks = await load_active_tasks(conn)
            log.info("tasks reloaded", tasks=[t.name for t in dispatcher.tasks])

        def on_notify(*_: object) -> None:
            task = asyncio.get_running_loop().create_task(reload_tasks())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        await leader.add_listener("prompt_tasks", on_notify)

        server = PilotServer(dispatcher, config.token, heartbeat_s=config.heartbeat_timeout_s / 4)
        pilot_port = await server.start(settings.pilot_host, settings.pilot_port)
        dead_letters = DeadLetters(producer, topics.dead_letter, metrics)
        resolver = RawMetadataResolver(settings.raw_root) if settings.raw_root else None
        intake = Intake(
            consumer_options=consumer_options(settings, endpoints.kafka_bootstrap),
            control_options=consumer_options(
                settings, endpoints.kafka_bootstrap, latency_critical=False
            ),
            name=config.name,
            topics={
                "next-visit": topics.next_visit,
                "next-visit-canceled": topics.next_visit_canceled,
                "image-arrival": topics.image_arrival,
            },
            dispatcher=dispatcher,
            writer=writer,
            codecs=codecs,
            dead_letters=dead_letters,
            metrics=metrics,
            resolver=resolver,
            start_from=config.start_from,
        )
        healthy = {"intake": False}
        http_port: int | None = None
        runner = web.AppRunner(make_app(dispatcher, metrics, lambda: healthy["intake"]))
        await runner.setup()
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        http_port = runner.addresses[0][1] if runner.addresses else None

        async with asyncio.TaskGroup() as tg:
            background = [
                tg.create_task(writer.run(), name="state-writer"),
                tg.create_task(publisher.run(), name="completion-publisher"),
                tg.create_task(_sweeper(dispatcher, config.sweep_interval_s), name="sweeper"),
                tg.create_task(LoopLagMonitor(metrics.registry).run(), name="loop-lag"),
            ]
            freeze_startup_objects()
            await _wait_for_pilots(dispatcher, config.heartbeat_timeout_s, stop)
            positions = await intake.start(pool)
            metrics.registry.register(DispatcherStateCollector(dispatcher, intake.lag))
            loops = [
                tg.create_task(intake.run_control(), name="intake-control"),
                tg.create_task(intake.run_images(), name="intake-images"),
            ]
            healthy["intake"] = True
            log.info("dispatcher ready", pilot_port=pilot_port, http_port=http_port,
                     tasks=[t.name for t in dispatcher.tasks], resume_at=positions)  # fmt: skip
            if on_ready is not None:
                on_ready(
                    Running(dispatcher, metrics, writer, publisher, pilot_port, http_port,
                            dead_letters)
                )  # fmt: skip
            await stop.wait()
            log.info("stopping: intake closed, draining jobs on pilots",
                     on_pilots=dispatcher.in_flight_on_pilots())  # fmt: skip
            intake.stop()
            healthy["intake"] = False
            await asyncio.gather(*loops)
            await _drain(dispatcher, config.drain_timeout_s)
            await asyncio.wait_for(writer.flush(), 30)
            with contextlib.suppress(TimeoutError):
                await publisher.flush(10)
            await producer.flush()
            await asyncio.wait_for(writer.flush(), 30)
            for task in (*background, *reloads):
                task.cancel()
        log.info("dispatcher stopped", published=publisher.published)
    finally:
        if intake is not None:
            await intake.close()
        if server is not None:
            await server.close()
        if runner is not None:
            await runner.cleanup()
        await producer.stop()
        await registry.close()
        if leader is not None:
            await leader.reset()  # drops listeners and the leader lock
            await pool.release(leader)
        await asyncio.wait_for(pool.close(), 10)


async def _sweeper(d: Dispatcher, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        d.sweep()


async def _wait_for_pilots(d: Dispatcher, grace: float, stop: asyncio.Event) -> None:
    """After a restart, give pilots that held jobs a chance to reconnect before images flow,
    so their jobs are claimed rather than run again elsewhere."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and not stop.is_set():
        waiting = [p for p in d.pilots.pilots.values() if not p.connected and p.running]
        if not waiting:
            return
        await asyncio.sleep(0.05)


async def _drain(d: Dispatcher, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while d.in_flight_on_pilots() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    left = d.in_flight_on_pilots()
    if left:
        log.warning("drain timeout: jobs still on pilots stay in the database", jobs=left)
