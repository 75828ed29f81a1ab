"""A dispatcher and pilots on this machine, plus an event sender and a completion collector.

Shared by ``prompt dev``, ``prompt bench dispatch``, the load-test replay and the tests, so they
all exercise the same real components: Kafka, PostgreSQL, the dispatcher, pilot processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from prompt.config import Settings
from prompt.events import (
    AvroCodec,
    EventKind,
    ImageArrival,
    LocalSchemaRegistry,
    NextVisit,
    make_registry,
)
from prompt.kafka import aiokafka_options, consumer_options
from prompt.stack import resolve_endpoints
from prompt.store import connect
from prompt.tasks import TaskFile, apply_tasks

TAI_MINUS_UTC = 37.0


def lsstcam_task_file(
    *,
    name: str,
    detectors: str,
    payload: dict[str, Any],
    deadline_s: float = 60.0,
    image_timeout_s: float = 60.0,
    job_timeout_s: float = 120.0,
    max_attempts: int = 2,
) -> TaskFile:
    """One task on LSSTCam science detectors (``detectors``: e.g. ``0-188`` or ``3,94``)."""
    spec = {
        "name": name, "instrument": "LSSTCam", "detectors": {"include": detectors},
        "payload": payload, "job_timeout_s": job_timeout_s, "deadline_s": deadline_s,
        "image_timeout_s": image_timeout_s, "max_attempts": max_attempts,
    }  # fmt: skip
    return TaskFile.model_validate({"tasks": [spec]})


def sleep_task_file(
    *,
    mean_s: float = 0.5,
    sigma: float = 0.0,
    distribution: str = "fixed",
    detectors: str = "0-188",
    max_attempts: int = 2,
    deadline_s: float = 60.0,
    image_timeout_s: float = 60.0,
    job_timeout_s: float = 120.0,
    fail_rate: float = 0.0,
    max_s: float = 600.0,
    name: str = "lsstcam-sleep",
) -> TaskFile:
    """The built-in load-test task: every LSSTCam science detector, ``sleep`` payload."""
    params = {"distribution": distribution, "mean_s": mean_s, "sigma": sigma,
              "fail_rate": fail_rate, "max_s": max_s}  # fmt: skip
    return lsstcam_task_file(
        name=name, detectors=detectors, payload={"kind": "sleep", "params": params},
        deadline_s=deadline_s, image_timeout_s=image_timeout_s, job_timeout_s=job_timeout_s,
        max_attempts=max_attempts,
    )  # fmt: skip


def alert_task_file(
    *,
    name: str = "lsstcam-alerts",
    detectors: str = "0-188",
    deadline_s: float = 60.0,
    image_timeout_s: float = 60.0,
    job_timeout_s: float = 120.0,
    max_attempts: int = 2,
    threshold: float = 5.0,
) -> TaskFile:
    """The reference alert pipeline on LSSTCam science detectors."""
    payload = {"kind": "python", "entry": "prompt.pipeline.task:run",
               "params": {"threshold": threshold}}  # fmt: skip
    return lsstcam_task_file(
        name=name, detectors=detectors, payload=payload, deadline_s=deadline_s,
        image_timeout_s=image_timeout_s, job_timeout_s=job_timeout_s, max_attempts=max_attempts,
    )  # fmt: skip


async def apply_task_file(settings: Settings, tasks: TaskFile) -> None:
    conn = await connect(resolve_endpoints(settings).database_url)
    try:
        await apply_tasks(conn, tasks)
    finally:
        await conn.close()


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that makes a child ``prompt`` process see the same settings."""
    endpoints = resolve_endpoints(settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPT_")}
    env.update(
        PROMPT_DATABASE_URL=endpoints.database_url,
        PROMPT_KAFKA_BOOTSTRAP=endpoints.kafka_bootstrap,
        PROMPT_DISPATCHER_NAME=settings.dispatcher_name,
        PROMPT_HEARTBEAT_TIMEOUT_S=str(settings.heartbeat_timeout_s),
        PROMPT_KAFKA_FETCH_MAX_WAIT_MS=str(settings.kafka_fetch_max_wait_ms),
        PROMPT_DISPATCH_MODE=settings.dispatch_mode,
        PROMPT_AFFINITY_WAIT_S=str(settings.affinity_wait_s),
        PROMPT_LOG_FORMAT="json",
        PROMPT_LOG_LEVEL=settings.log_level,
    )
    if settings.pilot_token is not None:
        env["PROMPT_PILOT_TOKEN"] = settings.pilot_token.get_secret_value()
    if settings.operator_token is not None:
        env["PROMPT_OPERATOR_TOKEN"] = settings.operator_token.get_secret_value()
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if name.startswith("pilot_tls_") and value is not None:
            env[f"PROMPT_{name.upper()}"] = str(value)
    if settings.raw_root is not None:
        env["PROMPT_RAW_ROOT"] = str(settings.raw_root)
    if settings.calib_root is not None:
        env["PROMPT_CALIB_ROOT"] = settings.calib_root
    for name, topic in settings.topics.model_dump().items():
        env[f"PROMPT_TOPIC_{name.upper()}"] = topic
    return env


@dataclass
class ChildProcess:
    """A ``prompt`` child process in its own process group."""

    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL to the whole group: the process and its workers die without a word."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 9)
        self.proc.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then wait: the graceful stop."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        return self.proc.wait(timeout)

    def stop_if_running(self, timeout: float = 60) -> None:
        """SIGTERM; if it has not exited within ``timeout``, SIGKILL the whole group (a stuck
        child must not abort the caller's clean-up and outlive it)."""
        if self.proc.poll() is None:
            try:
                self.terminate(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class ServiceProcess(ChildProcess):
    """A ``prompt serve`` child process."""

    pilot_port: int = 0
    http_port: int = 0

    async def status(self) -> dict[str, Any]:
        import aiohttp

        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.http_port}/status") as resp,
        ):
            result: dict[str, Any] = await resp.json()
            return result

    async def ready(self) -> dict[str, Any]:
        """``/readyz``: whether it leads with every part making progress, and why not."""
        import aiohttp

        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.http_port}/readyz") as resp,
        ):
            result: dict[str, Any] = await resp.json()
            return result

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until ``/readyz`` says ready (a standby never is)."""
        import aiohttp

        async with asyncio.timeout(timeout):
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"prompt serve exited ({self.proc.returncode}): {self.log}")
                try:
                    async with (
                        aiohttp.ClientSession() as http,
                        http.get(f"http://127.0.0.1:{self.http_port}/readyz") as resp,
                    ):
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    async def wait_pilots(self, count: int, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            while sum(p["connected"] for p in (await self.status())["pilots"]) < count:
                await asyncio.sleep(0.1)


def start_dispatcher(
    settings: Settings,
    *,
    log_dir: Path,
    pilot_port: int | None = None,
    http_port: int | None = None,
    extra_env: dict[str, str] | None = None,
    log_name: str = "dispatcher",
) -> ServiceProcess:
    """A ``prompt serve`` process (ports fixed by the caller to restart one in place);
    ``extra_env`` adds variables settings do not express (e.g. ``PROMPT_PILOT_TOKEN_FILE``)."""
    from prompt.stack.processes import free_port

    pilot_port = pilot_port or free_port()
    http_port = http_port or free_port()
    env = {**settings_env(settings), **(extra_env or {})}
    env.update(PROMPT_PILOT_PORT=str(pilot_port), PROMPT_HTTP_PORT=str(http_port))
    env.update(extra_env or {})
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{log_name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prompt", "serve"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
    return ServiceProcess(proc, log, pilot_port=pilot_port, http_port=http_port)


@dataclass
class PilotProcess(ChildProcess):
    pilot_id: str = ""


def start_pilot(
    settings: Settings,
    dispatcher: int | str,
    pilot_id: str,
    *,
    slots: int = 2,
    log_dir: Path,
    extra_args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
) -> PilotProcess:
    """A real ``prompt pilot`` process in its own process group (killable with its workers).
    ``dispatcher``: the pilot port on this host, or ``HOST:PORT[,HOST:PORT...]``."""
    assert settings.pilot_token is not None
    address = f"127.0.0.1:{dispatcher}" if isinstance(dispatcher, int) else dispatcher
    # The broker and alert topic too: pilots publish alerts.
    env = {**settings_env(settings), **(extra_env or {})}
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{pilot_id}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prompt", "pilot",
             "--dispatcher", address, "--pilot-id", pilot_id,
             "--slots", str(slots), *extra_args],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
    return PilotProcess(proc, log, pilot_id=pilot_id)


class InProcessDispatcher:
    """``prompt serve`` running as a task of the current event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = asyncio.Event()
        self._ready: asyncio.Future[Any] | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Any:
        from prompt.dispatcher.service import serve

        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        ready = self._ready

        def on_ready(running: Any) -> None:
            if not ready.done():
                ready.set_result(running)

        self._task = loop.create_task(serve(self.settings, self.stop, on_ready=on_ready))
        done, _ = await asyncio.wait({self._task, self._ready}, return_when="FIRST_COMPLETED")
        if self._task in done:
            self._task.result()
            raise RuntimeError("dispatcher exited before it was ready")
        return self._ready.result()

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        if self._task is not None:
            await self._task


async def wait_for_pilots(running: Any, count: int, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while len(running.engine.book.pilots.connected()) < count:
            await asyncio.sleep(0.02)


def next_visit_for(
    group_id: str,
    *,
    start_utc: float,
    filters: str = "r_57",
    survey: str = "BLOCK-365",
    ra: float = 150.0,
    dec: float = -30.0,
    duration: float = 30.0,
    nimages: int = 1,
    instrument: str = "LSSTCam",
    script_sal_index: int = 1,
) -> NextVisit:
    return NextVisit(
        instrument=instrument,
        group_id=group_id,
        survey=survey,
        filters=filters,
        position=(ra, dec),
        coordinate_system=2,
        camera_angle=0.0,
        rotation_system=2,
        start_time=start_utc + TAI_MINUS_UTC,
        duration=duration,
        nimages=nimages,
        dome=2,
        sal_index=1,
        script_sal_index=script_sal_index,
        efd_stamp=time.time(),
    )


class EventSender:
    """Publishes next-visit, cancel and image-arrival events as the observatory would."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        registry = LocalSchemaRegistry()
        self.nv_codec = AvroCodec(EventKind.NEXT_VISIT, registry)
        self.cancel_codec = AvroCodec(EventKind.NEXT_VISIT_CANCELED, registry)
        self.image_codec = AvroCodec(EventKind.IMAGE_ARRIVAL, registry)
        opts = aiokafka_options(settings, resolve_endpoints(settings).kafka_bootstrap)
        # A burst of image events leaves as one produce request (one batch, one fetch).
        self.producer = AIOKafkaProducer(
            **opts, linger_ms=5, max_batch_size=1024 * 1024, enable_idempotence=False
        )

    async def __aenter__(self) -> EventSender:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def next_visit(self, nv: NextVisit) -> None:
        await self.producer.send_and_wait(
            self.settings.topics.next_visit,
            self.nv_codec.encode(nv.to_record()),
            key=nv.group_id.encode(),
        )

    async def cancel(self, group_id: str, script_sal_index: int = 1) -> None:
        record = {"groupId": group_id, "scriptSalIndex": script_sal_index}
        await self.producer.send_and_wait(
            self.settings.topics.next_visit_canceled,
            self.cancel_codec.encode(record),
            key=group_id.encode(),
        )

    async def raw(self, topic: str, value: bytes) -> None:
        await self.producer.send_and_wait(topic, value)

    async def image(self, arrival: ImageArrival) -> None:
        """Enqueue one image-arrival (delivery is not awaited: a camera does not wait).

        Keyed by visit (group id): a visit's images stay in order on one partition, and a
        burst leaves as one batch to one partition rather than a sliver to each."""
        await self.producer.send(
            self.settings.topics.image_arrival,
            self.image_codec.encode(arrival.to_record()),
            key=arrival.group_id.encode(),
        )

    async def images(self, arrivals: list[ImageArrival]) -> None:
        """One burst: all enqueued at once, then flushed."""
        topic = self.settings.topics.image_arrival
        futures = [
            await self.producer.send(
                topic, self.image_codec.encode(a.to_record()), key=a.group_id.encode()
            )
            for a in arrivals
        ]
        await asyncio.gather(*futures)


def image_arrivals(
    nv: NextVisit,
    detectors: range | list[int],
    *,
    snap: int = 0,
    event_time: float | None = None,
    uri_for: Callable[[int], str] | None = None,
) -> list[ImageArrival]:
    """One image-arrival per detector; ``uri_for(detector)`` names the raw (default: a
    made-up key, for payloads that do not read it)."""
    now = time.time() if event_time is None else event_time
    return [
        ImageArrival(
            instrument=nv.instrument,
            group_id=nv.group_id,
            snap=snap,
            detector=d,
            uri=uri_for(d)
            if uri_for
            else f"s3://rubin-summit/{nv.instrument}/{d:03d}/{nv.group_id}.fits",
            event_time=now,
        )
        for d in detectors
    ]


@dataclass
class CompletionCollector:
    """Reads the completion topic from the beginning; counts every record per job id."""

    settings: Settings
    poll_interval_s: float = 0.0
    """Pause between reads: fewer, larger fetches (on the embedded broker each fetch that
    returns data costs time proportional to the partition's size)."""
    records: list[dict[str, Any]] = field(default_factory=list)
    by_job: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> CompletionCollector:
        opts = consumer_options(
            self.settings,
            resolve_endpoints(self.settings).kafka_bootstrap,
            latency_critical=False,
        )
        self._consumer = AIOKafkaConsumer(**opts, enable_auto_commit=False)
        await self._consumer.start()
        topic = self.settings.topics.completion
        tps = [TopicPartition(topic, p) for p in self._consumer.partitions_for_topic(topic) or []]
        self._consumer.assign(tps)
        for tp in tps:
            self._consumer.seek(tp, 0)
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._task.add_done_callback(lambda _: self._changed.set())  # wake waiters: it died
        return self

    async def _run(self) -> None:
        assert self._consumer is not None
        # The dispatcher's registry: with one configured, completions carry its ids.
        registry = make_registry(self.settings.schema_registry_url)
        codec = AvroCodec(EventKind.COMPLETION, registry)
        try:
            while True:
                batch = await self._consumer.getmany(timeout_ms=200)
                for msgs in batch.values():
                    for msg in msgs:
                        record = await codec.decode(msg.value)
                        self.records.append(record)
                        self.by_job.setdefault(record["jobId"], []).append(record)
                if batch:
                    self._changed.set()
                if self.poll_interval_s:
                    await asyncio.sleep(self.poll_interval_s)
        finally:
            await registry.close()

    async def wait_for(self, count: int, timeout: float = 60.0) -> None:
        """Until ``count`` distinct jobs have completed."""
        async with asyncio.timeout(timeout):
            while len(self.by_job) < count:
                if self._task is not None and self._task.done():
                    self._task.result()  # the reading task failed: say why, do not wait on
                    raise RuntimeError("the completion collector stopped")
                self._changed.clear()
                await self._changed.wait()

    def for_group(self, group_id: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["groupId"] == group_id]

    def duplicates(self) -> int:
        return sum(len(v) - 1 for v in self.by_job.values())

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
