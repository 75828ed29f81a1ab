"""One term as leader: from winning the lock to stopping or losing it.

Everything a term builds (pool, producer, writer, publisher, in-memory state, pilot channel,
intake) belongs to it and is thrown away with it: the next term — in this process or another
— starts from what PostgreSQL holds. A term ends in one of three ways:
- ``stop`` is set: stop intake, drain jobs on pilots (with a timeout), commit state, publish
  pending completions, close (the lifecycle of Temporal's worker);
- leadership is lost (the lock connection died, or a write was fenced): stop acting at once,
  nothing more is written;
- a dependency stays unreachable past its retry budget: the same, reported as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiokafka import AIOKafkaProducer

from prompt.config import Settings
from prompt.dispatcher.config import DispatcherConfig
from prompt.dispatcher.consumers import Consumers
from prompt.dispatcher.deadletters import DeadLetters
from prompt.dispatcher.engine import Engine
from prompt.dispatcher.health import Health
from prompt.dispatcher.intake import Intake
from prompt.dispatcher.leadership import Fence, Leadership
from prompt.dispatcher.outbox import CompletionPublisher
from prompt.dispatcher.pilot_server import PilotServer
from prompt.dispatcher.recovery import recover
from prompt.dispatcher.runtime import Runtime
from prompt.dispatcher.writer import StateWriter
from prompt.events import AvroCodec, EventKind, SchemaRegistry
from prompt.events.raw_metadata import raw_resolver
from prompt.kafka import aiokafka_options, consumer_options
from prompt.metrics import DispatcherMetrics
from prompt.runtime import freeze_startup_objects
from prompt.stack import Endpoints
from prompt.store import create_pool
from prompt.tasks import load_active_tasks

log = structlog.get_logger(__name__)


class LeadershipLostError(RuntimeError):
    """The lock connection is gone: another instance may lead now."""


@dataclass
class Running:
    """Handles on the running term, for the CLI, the HTTP side, tests and benchmarks."""

    runtime: Runtime
    engine: Engine
    metrics: DispatcherMetrics
    writer: StateWriter
    publisher: CompletionPublisher
    pilot_port: int
    http_port: int | None
    dead_letters: DeadLetters
    intake: Intake


@dataclass
class TermContext:
    settings: Settings
    config: DispatcherConfig
    endpoints: Endpoints
    registry: SchemaRegistry
    metrics: DispatcherMetrics
    health: Health
    http_port: int | None
    pilot_port: int
    """Where the pilot channel listens; 0 at first means "any free port", and whichever port
    the first term got is kept for the next terms, so pilots find their way back."""


async def run_term(
    ctx: TermContext,
    leadership: Leadership,
    fence: Fence,
    stop: asyncio.Event,
    on_running: Callable[[Running | None], None],
) -> None:
    settings, config, metrics, health = ctx.settings, ctx.config, ctx.metrics, ctx.health
    kafka_opts = aiokafka_options(settings, ctx.endpoints.kafka_bootstrap)
    pool = await create_pool(ctx.endpoints.database_url, min_size=2, max_size=8)
    producer = AIOKafkaProducer(**kafka_opts, acks="all", linger_ms=1, enable_idempotence=False)
    intake: Intake | None = None
    server: PilotServer | None = None
    graceful = False
    try:
        await producer.start()
        topics = settings.topics
        codecs = {
            "next-visit": AvroCodec(EventKind.NEXT_VISIT, ctx.registry),
            "next-visit-canceled": AvroCodec(EventKind.NEXT_VISIT_CANCELED, ctx.registry),
            "image-arrival": AvroCodec(EventKind.IMAGE_ARRIVAL, ctx.registry),
        }
        completion_codec = await AvroCodec.for_topic(
            EventKind.COMPLETION, ctx.registry, topics.completion
        )
        publisher = CompletionPublisher(
            pool, fence, producer, topics.completion, f"{config.name}:outbox", kafka_opts,
            on_published=metrics.completions_published.inc,
        )  # fmt: skip
        writer = StateWriter(
            pool, config.name, fence, publisher.committed,
            observe_commit=lambda s, _n: metrics.commit.observe(s),
            on_rejected=lambda table: metrics.rows_rejected.labels(table).inc(),
        )  # fmt: skip
        async with pool.acquire() as conn:
            tasks = await load_active_tasks(conn)
            engine = Engine(config.engine, scheduling_name=config.scheduling,
                            codec=completion_codec, metrics=metrics, tasks=tasks)  # fmt: skip
            runtime = Runtime(engine, pool, fence, writer, config.name, metrics)
            await recover(runtime, conn, fence)
        await publisher.recover()
        health.probe("writer", lambda: _age(writer.oldest_change))
        health.probe("publisher", publisher.waiting_s)

        reloads: set[asyncio.Task[None]] = set()

        async def reload_tasks() -> None:
            async with pool.acquire() as conn:
                engine.tasks = await load_active_tasks(conn)
            log.info("tasks reloaded", tasks=[t.name for t in engine.tasks])

        def on_notify(*_: object) -> None:
            task = asyncio.get_running_loop().create_task(reload_tasks())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        await leadership.connection.add_listener("prompt_tasks", on_notify)

        server = PilotServer(runtime, config.token)
        pilot_port = await server.start(settings.pilot_host, ctx.pilot_port, config.pilot_tls)
        ctx.pilot_port = pilot_port
        engine.channel_open()
        dead_letters = DeadLetters(producer, topics.dead_letter, metrics)

        def header_read(nbytes: int) -> None:
            metrics.raw_header_reads.inc()
            metrics.raw_header_bytes.inc(nbytes)

        resolver = raw_resolver(settings, ctx.endpoints.s3, header_read)
        consumers = Consumers(
            consumer_options=consumer_options(settings, ctx.endpoints.kafka_bootstrap),
            control_options=consumer_options(
                settings, ctx.endpoints.kafka_bootstrap, latency_critical=False
            ),
            name=config.name,
            topics={
                "next-visit": topics.next_visit,
                "next-visit-canceled": topics.next_visit_canceled,
                "image-arrival": topics.image_arrival,
            },
            writer=writer,
            metrics=metrics,
            health=health,
            start_from=config.start_from,
            retry_for_s=config.dependency_retry_s,
        )
        intake = Intake(
            consumers=consumers,
            runtime=runtime,
            writer=writer,
            codecs=codecs,
            dead_letters=dead_letters,
            metrics=metrics,
            health=health,
            resolver=resolver,
            retry_for_s=config.dependency_retry_s,
        )
        writer.defer_while(intake.burst_left_s)
        async with asyncio.TaskGroup() as tg:
            background = [
                tg.create_task(writer.run(), name="state-writer"),
                tg.create_task(publisher.run(), name="completion-publisher"),
                tg.create_task(_sweeper(runtime, intake, config.sweep_interval_s), name="sweeper"),
                tg.create_task(leadership.watch(), name="leader-lock-watch"),
                tg.create_task(_until_lost(leadership), name="leadership"),
            ]
            freeze_startup_objects()
            await _wait_for_pilots(engine, config.engine.heartbeat_timeout_s, stop)
            positions = await intake.start(pool, stop)
            loops = [
                tg.create_task(intake.run_control(), name="intake-control"),
                tg.create_task(intake.run_images(), name="intake-images"),
            ]
            running = Running(runtime, engine, metrics, writer, publisher, pilot_port,
                              ctx.http_port, dead_letters, intake)  # fmt: skip
            on_running(running)
            log.info("dispatcher ready", pilot_port=pilot_port, http_port=ctx.http_port,
                     epoch=fence.epoch, tasks=[t.name for t in engine.tasks],
                     resume_at=positions)  # fmt: skip
            await stop.wait()
            graceful = True
            log.info("stopping: intake closed, draining jobs on pilots",
                     on_pilots=engine.in_flight_on_pilots())  # fmt: skip
            health.role = "stepping-down"
            intake.stop()
            await asyncio.gather(*loops)
            await _drain(engine, config.drain_timeout_s)
            await asyncio.wait_for(writer.flush(), 30)
            with contextlib.suppress(TimeoutError):
                await publisher.flush(10)
            await producer.flush()
            await asyncio.wait_for(writer.flush(), 30)
            for task in (*background, *reloads):
                task.cancel()
        log.info("dispatcher stopped", published=publisher.published)
    finally:
        on_running(None)
        if not graceful:
            # Lost or failed: close the pilot channel first, so no pilot works for a
            # dispatcher that no longer leads; they reconnect to whichever leads next.
            health.role = "stepping-down"
        if server is not None:
            await server.close()
        if intake is not None:
            await intake.close()
        await producer.stop()
        if graceful:
            await asyncio.wait_for(pool.close(), 10)
        else:
            pool.terminate()


def _age(since: float | None) -> float | None:
    return None if since is None else time.monotonic() - since


async def _until_lost(leadership: Leadership) -> None:
    await leadership.lost.wait()
    raise LeadershipLostError(leadership.why_lost)


async def _sweeper(runtime: Runtime, intake: Intake, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        runtime.sweep(images_read=intake.images_read())


async def _wait_for_pilots(engine: Engine, grace: float, stop: asyncio.Event) -> None:
    """After a restart, give pilots that held jobs a chance to reconnect before images flow,
    so their jobs are claimed rather than run again elsewhere."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and not stop.is_set():
        if not engine.pilots_awaited():
            return
        await asyncio.sleep(0.05)


async def _drain(engine: Engine, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while engine.in_flight_on_pilots() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    left = engine.in_flight_on_pilots()
    if left:
        log.warning("drain timeout: jobs still on pilots stay in the database", jobs=left)
