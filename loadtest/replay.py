"""Replay a night through the real service: embedded stack, ``prompt serve``, pilot processes.

The driver publishes each planned event at its wall time, kills pilots when the plan says so,
collects the completion events and hands everything to the report.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from loadtest.brokerprobe import FetchProbe, PartitionSize, partition_sizes
from loadtest.capacity import CapacityCut
from loadtest.chaos import Chaos, ChaosConfig, ChaosTargets, FaultRecord, chaos_schedule
from loadtest.checks import LagTolerance
from loadtest.images import calibrations_to_s3, image_publisher, storage_figures
from loadtest.plan import CANCEL, IMAGE, NEXT_VISIT, Faults, Plan, Timing, build_plan
from loadtest.progress import GcPacer, Progress
from loadtest.sampler import Sample, Sampler
from loadtest.schedule import Night
from loadtest.science import read_all
from loadtest.visits import for_alerts, group_id_for, next_visit, prepare_data
from prompt.config import S3Settings, Settings, Topics
from prompt.events import NextVisit
from prompt.kafka import ensure_topics
from prompt.sim import SimConfig
from prompt.sim.publish import store_prefix
from prompt.stack import Stack, owned_stack, resolve_endpoints
from prompt.stack.scratch import scratch_database
from prompt.stack.stack import ServerName
from prompt.tasks import TaskFile
from prompt.testing.processes import PilotProcess, ServiceProcess, start_dispatcher, start_pilot
from prompt.testing.tasks import alert_task_file, apply_task_file, sleep_task_file
from prompt.testing.traffic import CompletionCollector, EventSender


@dataclass(frozen=True)
class ReplayConfig:
    timing: Timing = field(default_factory=Timing)
    faults: Faults = field(default_factory=Faults)
    detectors: tuple[int, ...] = tuple(range(189))
    mode: str = "warm"
    pilots: int = 2
    slots: int = 96
    payload: str = "sleep"
    """``sleep`` (a stand-in of run_mean_s) or ``alert`` (the reference pipeline on generated
    data: calibrations, templates, raws with injected transients)."""
    run_mean_s: float = 10.0
    """sleep payload run time, night seconds (lognormal with run_sigma)."""
    run_sigma: float = 0.3
    calib_load_s: float = 0.5
    """Night seconds to load one calibration from the store (3 per job)."""
    poll_s: float = 2.0
    """cold mode: pilots ask for work this often (night seconds)."""
    deadline_s: float = 60.0
    heartbeat_timeout_s: float = 1.5
    """Wall seconds (not scaled): pilots silent this long are lost."""
    seed: int = 0
    log_dir: Path = Path(".prompt/replay/logs")
    data_root: Path = Path(".prompt/replay/data")
    """alert payload: where the synthetic observatory writes (calibrations are reused)."""
    sim: SimConfig = field(default_factory=SimConfig)
    quiet: bool = False
    image_partitions: int = 16
    """Partitions of the run's image-arrival topic (images keyed by visit). The embedded
    broker's fetch cost grows with the batches a partition holds, and a fetch that cannot list
    them within its max wait returns nothing: one partition holds about 3 hours of a night at
    20x (see docs/night.md)."""
    sample_s: float = 2.0
    """Wall seconds between samples of memory, CPU, lag and broker fetch cost."""
    lag_tolerance: LagTolerance = field(default_factory=LagTolerance)
    chaos: ChaosConfig | None = None
    """Seeded kills of the leading dispatcher (of two), a pilot, PostgreSQL and the broker
    (see :mod:`loadtest.chaos`); needs the embedded stack with ``broker_storage="s3"``."""
    images: str = "s3"
    """How images arrive: ``s3`` (each raw PUT to the raws bucket, then its bucket
    notification; alert calibrations and templates read from S3 too) or ``avro`` (Avro
    image-arrival events naming ``file://`` raws; calibrations from files)."""
    dispatch_order: str = "feasible"
    """PROMPT_DISPATCH_ORDER of the dispatchers: ``feasible`` or ``fifo``."""

    @property
    def data_uri(self) -> str:
        return f"file://{self.data_root.resolve()}"

    def calib_uri(self, s3: S3Settings) -> str:
        """The alert payload's calibration store, as the pilots are given it."""
        if self.images == "s3":
            return f"s3://{s3.bucket_calib}/{store_prefix(self.sim)}"
        return self.data_uri


@dataclass
class ReplayResult:
    night: Night
    config: ReplayConfig
    plan: Plan
    records: list[dict[str, Any]]
    group_of: dict[int, str]
    started_wall: float
    finished_wall: float
    pilot_slots: dict[str, int]
    kills: list[tuple[float, str]]
    alerts: list[bytes] = field(default_factory=list)
    """alert payload: every message value on the alert topic."""
    truth: list[dict[str, Any]] = field(default_factory=list)
    """alert payload: the injected sources."""
    driver_lags: list[tuple[int, float]] = field(default_factory=list)
    """(visit index, wall s sent after its planned time) for every event sent."""
    produce_ms: list[tuple[float, float]] = field(default_factory=list)
    """(wall s since start, ms) of every next-visit's acknowledged produce."""
    samples: list[Sample] = field(default_factory=list)
    topic_sizes: list[PartitionSize] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    """chaos: every fault injected, with its recovery."""
    excused_lags: list[tuple[int, float]] = field(default_factory=list)
    """chaos: (visit index, wall lag s) of events sent while a fault was open or settling;
    kept out of ``driver_lags`` and so of the validity check."""
    double_ready: int = 0
    """chaos: looks at both dispatchers' /readyz that found both ready (must be 0)."""
    storage: dict[str, Any] = field(default_factory=dict)
    """images=s3: the PUTs and the dispatcher's ranged header reads (see storage_figures)."""
    capacity: CapacityCut | None = None


def replay_task(config: ReplayConfig, name: str) -> TaskFile:
    """The replay's task, with every night duration divided by speed."""
    s = config.timing.speed
    detectors = ",".join(str(d) for d in config.detectors)
    if config.payload == "alert":
        return alert_task_file(
            name=name, detectors=detectors, deadline_s=config.deadline_s / s,
            image_timeout_s=60.0 / s, job_timeout_s=120.0, max_attempts=2,
        )  # fmt: skip
    if config.payload != "sleep":
        raise ValueError(f"payload {config.payload!r} is not available (sleep, alert)")
    return sleep_task_file(
        name=name,
        detectors=detectors,
        distribution="lognormal",
        mean_s=config.run_mean_s / s,
        sigma=config.run_sigma,
        max_s=4 * config.run_mean_s / s,
        job_timeout_s=5 * config.run_mean_s / s,
        deadline_s=config.deadline_s / s,
        image_timeout_s=60.0 / s,
        max_attempts=3,
    )


COLLECT_EVERY_S = 2.0
"""The completion collector reads this often: each read of its partition costs the embedded
broker a listing of every batch there (~14,500 by the end of a night at 20x: ~12 ms by the
slope measured in docs/night.md, E1)."""


async def run_replay(
    settings: Settings, night: Night, config: ReplayConfig, stack: Stack | None = None
) -> ReplayResult:
    """``stack``: the caller's running stack, if it holds one over ``settings.state_dir``
    (chaos restarts its servers: another object over the same stack would go on with their
    old processes)."""
    run_id = uuid.uuid4().hex[:8]
    truth: list[dict[str, Any]] = []
    if config.payload == "alert":
        night = for_alerts(night)
        truth = await prepare_data(night, config, run_id)
    # The stack with the base settings: it creates the default topics, not this run's (which
    # are made below, with their own partition counts).
    base = settings
    stack = stack or Stack(base)
    topics = Topics().suffixed(run_id)
    settings = settings.with_overrides(
        topics=topics,
        dispatcher_name=f"replay-{run_id}",
        pilot_token=SecretStr(uuid.uuid4().hex),
        heartbeat_timeout_s=config.heartbeat_timeout_s,
        dispatch_mode=config.mode,
        affinity_wait_s=settings.affinity_wait_s / config.timing.speed,
        raws_in_s3=config.images == "s3",
    )
    async with owned_stack(base, stack) as endpoints:
        status = stack.status()
        if config.chaos is not None and status.get("broker_storage") != "s3":
            raise ValueError(
                "--chaos restarts the embedded broker, which must keep its topics in S3: the "
                f"stack in {stack.state_dir} runs a broker with {status.get('broker_storage')!r} "
                "storage (stop it, or use another --state-dir; PROMPT_BROKER_STORAGE=s3)"
            )
        if config.images == "s3" and endpoints.s3 is None:
            raise ValueError(
                "images=s3: no S3 server (the database and broker are external: set "
                "PROMPT_S3_ENDPOINT_URL and its credentials, or use --avro-images)"
            )
        if config.payload == "alert" and config.images == "s3" and endpoints.s3 is not None:
            await calibrations_to_s3(
                config.data_root.resolve(), config.calib_uri(endpoints.s3), endpoints.s3,
                config.sim, quiet=config.quiet,
            )  # fmt: skip
        server_pids = {
            role: [status[role]["pid"]]
            for role in ("broker", "postgres")
            if isinstance(status.get(role), dict) and status[role].get("pid")
        }
        async with scratch_database(endpoints.database_url, "replay") as url:
            run_settings = settings.with_overrides(
                database_url=url, kafka_bootstrap=endpoints.kafka_bootstrap
            )
            await ensure_topics(
                run_settings, endpoints.kafka_bootstrap,
                partitions={topics.image_arrival: config.image_partitions},
            )  # fmt: skip
            await apply_task_file(run_settings, replay_task(config, f"replay-{run_id}"))
            result = await _drive(run_settings, night, config, run_id, server_pids, stack)
            result.topic_sizes = await partition_sizes(
                run_settings, endpoints.kafka_bootstrap,
                [topics.next_visit, topics.image_arrival, topics.completion],
            )  # fmt: skip
            if config.payload == "alert":
                result.alerts = await read_all(run_settings, run_settings.topics.alerts)
                result.truth = truth
            return result


def _pilot_args(config: ReplayConfig, settings: Settings) -> tuple[str, ...]:
    s = config.timing.speed
    # A new leader waits the heartbeat timeout for the pilots that held jobs: they must try
    # to reach it more often than that (the default pause grows to 5 s).
    reconnect = f"{config.heartbeat_timeout_s / 3:.3f}"
    args = ["--calib-load-ms", f"{1000 * config.calib_load_s / s:.3f}", "--heartbeat-s", "0.25",
            "--reconnect-max-s", reconnect]  # fmt: skip
    if config.mode == "cold":
        args += ["--poll-s", f"{config.poll_s / s:.4f}"]
    if config.payload == "alert":
        args += ["--calib-root", config.calib_uri(settings.s3),
                 "--warm-import", "prompt.pipeline.task"]  # fmt: skip
    return tuple(args)


async def _drive(
    settings: Settings,
    night: Night,
    config: ReplayConfig,
    run_id: str,
    server_pids: dict[str, list[int]],
    stack: Stack,
) -> ReplayResult:
    s = config.timing.speed
    plan = build_plan(night, list(config.detectors), config.timing, config.faults, config.seed)
    rng = random.Random(config.seed + 1)
    log_dir = config.log_dir / run_id
    # With chaos, two under one name: the first leads, the second stands by.
    order_env = {"PROMPT_DISPATCH_ORDER": config.dispatch_order}
    services: list[ServiceProcess] = [
        start_dispatcher(settings, log_dir=log_dir, log_name="dispatcher-0", extra_env=order_env)
    ]
    drop = config.faults.capacity_drop
    cut = CapacityCut(drop, s, config.seed) if drop else None
    service = services[0]
    pilots: dict[str, PilotProcess] = {}
    kills: list[tuple[float, str]] = []
    lags: list[tuple[int, float]] = []
    excused: list[tuple[int, float]] = []
    produce_ms: list[tuple[float, float]] = []
    chaos: Chaos | None = None

    def pids() -> dict[str, list[int]]:
        live = [p.proc.pid for p in list(pilots.values()) if p.proc.poll() is None]
        servers = dict(server_pids)
        if chaos is not None:  # a restarted server has a new pid
            roles: tuple[ServerName, ...] = ("broker", "postgres")
            servers = {r: [pid] for r in roles if r in servers and (pid := stack.server(r).pid)}
        return {"dispatcher": [d.proc.pid for d in services], "pilots": live, **servers}

    def metrics_url() -> str:
        leader = chaos.watch.leader() if chaos and chaos.watch else 0
        return f"http://127.0.0.1:{services[leader or 0].http_port}/metrics"

    bootstrap = resolve_endpoints(settings).kafka_bootstrap
    probe = FetchProbe(settings, bootstrap, settings.topics.image_arrival)

    def spawn(pid: str) -> None:
        addresses = ",".join(f"127.0.0.1:{d.pilot_port}" for d in services)
        pilots[pid] = start_pilot(
            settings, addresses, pid, slots=config.slots, log_dir=log_dir,
            extra_args=_pilot_args(config, settings),
        )  # fmt: skip

    def kill_pilot(pid: str) -> None:
        pilots.pop(pid).kill()
        kills.append((time.time(), pid))

    def kill_cut(pid: str) -> None:
        pilots.pop(pid).kill()

    def replace_pilot(pid: str) -> str:
        """Chaos: under a new id, so that its registration is unambiguous."""
        new = f"{pid.split('.')[0]}.r{len(kills)}"
        spawn(new)
        return new

    try:
        await service.wait_ready()
        if config.chaos is not None:
            services.append(start_dispatcher(
                settings, log_dir=log_dir, log_name="dispatcher-1", extra_env=order_env
            ))  # fmt: skip
            chaos = Chaos(
                chaos_schedule(plan.end_wall, config.chaos),
                ChaosTargets(stack, services, lambda: sorted(pilots), kill_pilot, replace_pilot,
                             connected_ids, config.pilots, log_dir, settings, order_env),
                config.chaos, s,
            )  # fmt: skip
        for i in range(config.pilots):
            spawn(f"replay-{run_id}-{i}")
        await service.wait_pilots(config.pilots)
        if chaos is not None:  # its start-up, CPU-bound, is over before the night's first event
            await chaos.standby_up()
        groups = {v.index: group_id_for(night, v, run_id) for v in night.visits}
        progress = Progress(plan, config.quiet, s)
        pacer = GcPacer()
        await probe.start()
        sampler = Sampler(
            interval_s=config.sample_s, clock=lambda: time.monotonic() - t0, pids=pids,
            metrics_url=metrics_url,
            image_topic=settings.topics.image_arrival, fetch_ms=probe.fetch_ms,
        )  # fmt: skip
        async with (
            CompletionCollector(settings, poll_interval_s=COLLECT_EVERY_S) as collector,
            EventSender(settings) as sender,
            sampler,
            Chaos.maybe(chaos, lambda: time.monotonic() - t0),
        ):
            t0 = time.monotonic()  # the sampler's clock, until the schedule starts below
            images = image_publisher(
                config.images, settings, sender,
                raws_from=config.data_root.resolve() if config.payload == "alert" else None,
                avro_uri=config.data_uri if config.payload == "alert" else "s3://rubin-summit",
            )  # fmt: skip
            await images.warm()
            pacer.start()
            t0 = time.monotonic()
            started_wall = time.time()
            kill_queue = list(plan.kill_times)
            restarts: list[tuple[float, str]] = []
            nvs: dict[int, NextVisit] = {}
            for event in plan.events:
                while True:
                    now = time.monotonic() - t0
                    if kill_queue and kill_queue[0] <= now:
                        kill_queue.pop(0)
                        victim = rng.choice(sorted(pilots))
                        pilots[victim].kill()
                        kills.append((time.time(), victim))
                        restarts.append((now + 1.0, victim))
                        continue
                    if restarts and restarts[0][0] <= now:
                        spawn(restarts.pop(0)[1])
                        continue
                    if cut is not None and cut.step(now, pilots, kill_cut, spawn):
                        continue
                    wait = event.wall - now
                    pacer.idle(wait)
                    if wait <= 0:
                        break
                    await asyncio.sleep(min(wait, 0.25))
                    progress.maybe_print(collector, len(night.visits))
                v = event.visit
                sent = time.monotonic() - t0
                await sender.resend_failed()
                if event.kind == NEXT_VISIT:
                    start_wall = started_wall + (event.wall + config.timing.lead_s / s)
                    nv = nvs.setdefault(
                        v.index, next_visit(night, v, groups[v.index], start_wall, s)
                    )
                    await sender.next_visit(nv)
                    produce_ms.append((sent, (time.monotonic() - t0 - sent) * 1e3))
                elif event.kind == CANCEL:
                    await sender.cancel(groups[v.index], v.visit_id)
                elif event.kind == IMAGE:
                    await images.publish(v, groups[v.index], event.detector, event.snap)
                delayed = (chaos is not None and chaos.disturbed(event.wall)) or (
                    cut is not None and cut.disturbed(event.wall, sent)
                )
                (excused if delayed else lags).append((v.index, sent - event.wall))
            await images.drain()
            for _, pid in restarts:  # replacements still due
                spawn(pid)
            if chaos is not None:
                await chaos.wait_done()
            await sender.resend_failed()
            # Everything sent: wait for every job's completion (expiry bounds the wait).
            grace = (max(v.visit_time for v in night.visits) * 2 + 60 + 4 * config.run_mean_s) / s
            deadline = time.monotonic() + grace + 30
            if cut is not None:  # the pilots come back at the window's end, however late
                deadline += max(0.0, cut.window[1] - (time.monotonic() - t0))
            while len(collector.by_job) < plan.jobs and time.monotonic() < deadline:
                if cut is not None:
                    cut.step(time.monotonic() - t0, pilots, kill_cut, spawn)
                pacer.idle(0.2)
                await asyncio.sleep(0.2)
                progress.maybe_print(collector, len(night.visits))
            await asyncio.sleep(1.0 + COLLECT_EVERY_S)  # a duplicate would show up now
            progress.maybe_print(collector, len(night.visits), force=True)
            records = list(collector.records)
            finished_wall = time.time()
            storage = await storage_figures(images, metrics_url())
    finally:
        GcPacer.stop()
        await probe.stop()
        for pilot in pilots.values():
            await asyncio.to_thread(pilot.stop_if_running)
        for d in services:
            await asyncio.to_thread(d.stop_if_running)
    return ReplayResult(
        night=night,
        config=config,
        plan=plan,
        records=records,
        group_of=groups,
        started_wall=started_wall,
        finished_wall=finished_wall,
        pilot_slots={pid: config.slots for pid in pilots},
        kills=kills,
        driver_lags=lags,
        produce_ms=produce_ms,
        samples=sampler.samples,
        faults=chaos.records if chaos else [],
        excused_lags=excused,
        double_ready=chaos.watch.double_ready if chaos and chaos.watch else 0,
        storage=storage,
        capacity=cut,
    )


async def connected_ids(service: ServiceProcess) -> set[str]:
    return {p["id"] for p in (await service.status())["pilots"] if p["connected"]}
