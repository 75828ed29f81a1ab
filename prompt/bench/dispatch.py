"""``prompt bench dispatch``: how fast the dispatcher turns an image burst into started jobs.

Everything is real and co-located: the embedded Kafka-protocol broker and PostgreSQL, a
``prompt serve`` process, P ``prompt pilot`` processes with warm workers running the ``sleep``
payload. Per visit: next-visit, wait until the pilots report the calibrations preloaded (the
observatory announces a visit >= 20 s ahead), then all D image-arrivals in one burst.

Figures (from the completion events and the dispatcher's own records):
- dispatch_ms: image-arrival consumed -> job started on the pilot (first attempts);
- resurrect_ms: next-visit consumed -> visit and its jobs committed;
- burst_ms: per visit, first image-arrival of the burst consumed -> last of its jobs started;
- with ``cpu_window_s``: the CPU each process role spent in that window from each burst's
  images (``prompt.bench.cpu``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from prompt.bench.cpu import CpuSampler
from prompt.config import Settings, Topics
from prompt.kafka import ensure_topics
from prompt.stack import owned_stack, resolve_database_url
from prompt.stack.scratch import scratch_database
from prompt.stack.stack import Stack
from prompt.stats import summarize
from prompt.store import connect
from prompt.testing.processes import start_dispatcher, start_pilot
from prompt.testing.tasks import apply_task_file, sleep_task_file
from prompt.testing.traffic import CompletionCollector, EventSender, image_arrivals, next_visit_for


@dataclass(frozen=True)
class BenchShape:
    visits: int = 20
    detectors: int = 189
    pilots: int = 2
    slots: int = 96
    sleep_s: float = 0.1
    preload_timeout_s: float = 30.0
    warmup: int = 1
    """Visits run first and left out of the percentiles (reported as warmup_burst_ms): the
    first burst after start runs every code path in every process for the first time."""
    pilot_args: tuple[str, ...] = ()
    """Extra ``prompt pilot`` flags, the same for every pilot."""
    lead_s: float = 0.3
    """A visit's images go no sooner than this after its next-visit (and once its calibrations
    are preloaded). At the summit the lead is 20 s or more, so what a next-visit sets off (the
    resurrection, its rows committed, the preloads) is done before the images come; sent at
    once, that work ran inside the burst (measured: the database ~8 ms of a burst's CPU)."""
    cpu_window_s: float = 0.0
    """When > 0: the CPU of each process role in this window from each burst's images (keep
    it under ``sleep_s``, or the jobs' ends are counted too)."""


def isolated(settings: Settings, run_id: str) -> Settings:
    """Fresh topics and a fresh dispatcher name on a shared stack, so runs never mix."""
    topics = Topics().suffixed(run_id)
    return settings.with_overrides(
        topics=topics,
        dispatcher_name=f"bench-{run_id}",
        pilot_token=SecretStr(uuid.uuid4().hex),
    )


async def run_bench(settings: Settings, shape: BenchShape, log_dir: Path) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    settings = isolated(settings, run_id)
    stack = Stack(settings)
    async with (
        owned_stack(settings, stack) as endpoints,
        scratch_database(endpoints.database_url, "bench") as url,
    ):
        run_settings = settings.with_overrides(
            database_url=url, kafka_bootstrap=endpoints.kafka_bootstrap
        )
        return await _run(run_settings, shape, log_dir, run_id, stack)


async def _run(
    settings: Settings, shape: BenchShape, log_dir: Path, run_id: str, stack: Stack
) -> dict[str, Any]:
    await ensure_topics(settings, settings.kafka_bootstrap or "")
    await apply_task_file(
        settings,
        sleep_task_file(
            mean_s=shape.sleep_s, detectors=f"0-{shape.detectors - 1}", name=f"bench-{run_id}"
        ),
    )
    service = start_dispatcher(settings, log_dir=log_dir)
    pilots = []
    try:
        await service.wait_ready()
        pilots = [
            start_pilot(settings, service.pilot_port, f"bench-{run_id}-{i}", slots=shape.slots,
                        log_dir=log_dir, extra_args=shape.pilot_args)
            for i in range(shape.pilots)
        ]  # fmt: skip
        await service.wait_pilots(shape.pilots)
        sampler = _sampler(stack, service, pilots, shape) if shape.cpu_window_s > 0 else None
        groups: list[str] = []
        async with CompletionCollector(settings) as collector, EventSender(settings) as sender:
            total = shape.warmup + shape.visits
            for v in range(total):
                start = time.time() + 20.0
                group = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start)) + f".{v:03d}"
                group += f"-{run_id}"
                nv = next_visit_for(group, start_utc=start, filters="ugrizy"[1 + v % 3] + "_57")
                groups.append(group)
                await sender.next_visit(nv)
                images_at = time.monotonic() + shape.lead_s
                await _wait_preloaded(service, group, shape)
                await asyncio.sleep(images_at - time.monotonic())
                window = sampler.start() if sampler and v >= shape.warmup else None
                await sender.images(image_arrivals(nv, range(shape.detectors)))
                if sampler and window is not None:
                    await sampler.end(window)
                await collector.wait_for((v + 1) * shape.detectors, timeout=120)
                label = "warm-up visit" if v < shape.warmup else "visit"
                print(f"  {label} {v + 1}/{total} done", flush=True)
            await asyncio.sleep(0.5)  # let any duplicate surface before counting
            records = list(collector.records)
            duplicates = collector.duplicates()
            completed_jobs = len(collector.by_job)
        resurrect = await _resurrect_ms(settings, groups[shape.warmup :])
    finally:
        for pilot in pilots:
            await asyncio.to_thread(pilot.terminate, 60)
        await asyncio.to_thread(service.terminate, 60)
    warm = set(groups[: shape.warmup])
    cpu = sampler.summary() if sampler else None
    extra = {"cpu": cpu} if cpu else {}
    return (
        _report(
            shape,
            [r for r in records if r["groupId"] not in warm],
            duplicates,
            completed_jobs - shape.warmup * shape.detectors,
            resurrect,
            warmup=[r for r in records if r["groupId"] in warm],
        )
        | extra
    )


def _sampler(stack: Stack, service: Any, pilots: list[Any], shape: BenchShape) -> CpuSampler:
    status = stack.status()
    servers = {role: status.get(role, {}).get("pid") for role in ("postgres", "broker", "s3")}
    roots = {
        "dispatcher": [service.proc.pid],
        "pilots": [p.proc.pid for p in pilots],
        **{role: [pid] for role, pid in servers.items() if pid},
    }
    children = {"dispatcher": "dispatcher", "pilots": "workers", "postgres": "postgres",
                "broker": "broker", "s3": "s3"}  # fmt: skip
    return CpuSampler(roots, children, shape.cpu_window_s)


async def _wait_preloaded(service: Any, group: str, shape: BenchShape) -> None:
    deadline = time.monotonic() + shape.preload_timeout_s
    while time.monotonic() < deadline:
        status = await service.status()
        for visit in status["visits"]:
            if visit["group"] == group and visit["preloaded"] >= visit["jobs"]:
                return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"visit {group}: calibrations not preloaded in {shape.preload_timeout_s} s")


async def _resurrect_ms(settings: Settings, groups: list[str]) -> list[float]:
    conn = await connect(resolve_database_url(settings))
    try:
        rows = await conn.fetch(
            "SELECT received_at, resurrected_at FROM visits WHERE group_id = ANY($1::text[])",
            groups,
        )
    finally:
        await conn.close()
    return [(r["resurrected_at"] - r["received_at"]) * 1e3 for r in rows if r["resurrected_at"]]


def _burst_ms(records: list[dict[str, Any]]) -> list[float]:
    by_group: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_group.setdefault(r["groupId"], []).append(r)
    return [
        (max(r["started"] for r in rs) - min(r["imageConsumed"] for r in rs)) * 1e3
        for rs in by_group.values()
        if all(r["started"] is not None for r in rs)
    ]


def _report(
    shape: BenchShape,
    records: list[dict[str, Any]],
    duplicates: int,
    completed_jobs: int,
    resurrect: list[float],
    *,
    warmup: list[dict[str, Any]],
) -> dict[str, Any]:
    first = [r for r in records if r["attempt"] == 1 and r["dispatchMs"] is not None]
    by_group: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_group.setdefault(r["groupId"], []).append(r)
    bursts = _burst_ms(records)
    per_visit = [
        {"visit": i + 1, "burst_ms": round(b, 1),
         "cache_hit": round(sum(bool(r["cacheHit"]) for r in rs) / len(rs), 2)}
        for i, (b, rs) in enumerate(zip(bursts, by_group.values(), strict=False))
    ]  # fmt: skip
    jobs = shape.visits * shape.detectors
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {
        "shape": vars(shape),
        "jobs": jobs,
        "completions": len(records),
        "lost": jobs - completed_jobs,
        "duplicates": duplicates,
        "statuses": statuses,
        "cache_hit_rate": round(sum(1 for r in records if r["cacheHit"]) / max(1, len(records)), 3),
        "dispatch_ms": summarize([r["dispatchMs"] for r in first]),
        "resurrect_ms": summarize(resurrect),
        "burst_ms": {k: v for k, v in summarize(bursts).items() if k in ("p50", "max")},
        "warmup_burst_ms": [round(b, 1) for b in _burst_ms(warmup)],
        "warmup_dispatch_ms_max": round(max((r["dispatchMs"] or 0) for r in warmup), 2)
        if warmup
        else None,
        "per_visit": per_visit,
        "breakdown_ms": {
            # where dispatch_ms goes: consuming the burst, the dispatcher's own work, the pilot
            "burst_consume_spread": summarize(
                [
                    (max(r["imageConsumed"] for r in rs) - min(r["imageConsumed"] for r in rs))
                    * 1e3
                    for rs in by_group.values()
                ]
            ),
            "consumed_to_pushed": summarize(
                [(r["dispatched"] - r["imageConsumed"]) * 1e3 for r in first]
            ),
            "pushed_to_started": summarize([(r["started"] - r["dispatched"]) * 1e3 for r in first]),
            "pushed_to_started_by_pilot": {
                pilot: summarize(
                    [(r["started"] - r["dispatched"]) * 1e3 for r in first if r["pilot"] == pilot]
                )
                for pilot in sorted({r["pilot"] for r in first if r["pilot"]})
            },
        },
    }
