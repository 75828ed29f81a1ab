"""``prompt bench broker``: the embedded broker's cost with each storage (memory, S3).

For each storage a private stack is started in its own directory and measured with the
clients the service uses (aiokafka, acks=all):
- produce_ms: one record, sent and acknowledged, one after the other;
- e2e_ms: produce -> consumed by a consumer parked with ``fetch_max_wait_ms`` (10 ms, the
  service's image consumer; tansu answers a parked fetch only at the end of the wait);
- burst: 189 records (one visit's image arrivals) sent at once: all acknowledged, all consumed;
- fetch cost as the partition grows: CPU of the broker (and of the S3 server) with nobody
  fetching and while one consumer is parked at the end of a partition holding N one-record
  batches, and the time to fetch its last record.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import psutil
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from prompt.config import Settings
from prompt.stack import Stack
from prompt.stats import summarize

log = structlog.get_logger(__name__)

Storage = Literal["memory", "s3"]


@dataclass(frozen=True)
class BrokerBenchShape:
    produce: int = 300
    e2e: int = 200
    e2e_interval_s: float = 0.025
    bursts: int = 10
    burst_size: int = 189
    fill: tuple[int, ...] = (0, 250, 500, 1000, 4000, 20000)
    """Batches in the partition at each idle-fetch measurement (stops at the first level
    where fetching the partition's last record takes longer than ``tail_timeout_s``)."""
    tail_timeout_s: float = 10.0
    idle_s: float = 3.0
    fetch_max_wait_ms: int = 10
    fill_producers: int = 8
    timeout_s: float = 600.0
    """Per storage: a broker that stops answering ends the run instead of hanging it."""


class _Client:
    """Producer + topic helpers on one bootstrap address."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)

    async def __aenter__(self) -> _Client:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def topic(self) -> str:
        name = f"bench.broker.{uuid.uuid4().hex[:8]}"
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, 1, 1)])
        finally:
            await admin.close()
        return name

    def consumer(self, wait_ms: int) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=wait_ms
        )


async def _produce_latency(c: _Client, n: int) -> list[float]:
    topic = await c.topic()
    for _ in range(20):  # warm-up: connections, metadata
        await c.producer.send_and_wait(topic, b"warm")
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await c.producer.send_and_wait(topic, b"x" * 200)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def _consume_until(consumer: AIOKafkaConsumer, tp: TopicPartition, count: int) -> float:
    """Consume ``count`` records; the time the last one arrived."""
    seen = 0
    async with asyncio.timeout(60):
        while seen < count:
            seen += len((await consumer.getmany(tp, timeout_ms=1000)).get(tp, []))
    return time.perf_counter()


async def _e2e_and_bursts(c: _Client, shape: BrokerBenchShape) -> dict[str, Any]:
    topic = await c.topic()
    tp = TopicPartition(topic, 0)
    consumer = c.consumer(shape.fetch_max_wait_ms)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        await consumer.position(tp)
        e2e: list[float] = []

        async def receive() -> None:
            while len(e2e) < shape.e2e:
                for rec in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                    e2e.append((time.perf_counter() - float(rec.value or b"0")) * 1000)

        receiver = asyncio.create_task(receive())
        for _ in range(shape.e2e):
            await c.producer.send(topic, repr(time.perf_counter()).encode())
            await asyncio.sleep(shape.e2e_interval_s)
        async with asyncio.timeout(60):
            await receiver

        acked, consumed = [], []
        for _ in range(shape.bursts):
            t0 = time.perf_counter()
            sends = [await c.producer.send(topic, b"i" * 200) for _ in range(shape.burst_size)]
            await asyncio.gather(*sends)
            acked.append((time.perf_counter() - t0) * 1000)
            consumed.append((await _consume_until(consumer, tp, shape.burst_size) - t0) * 1000)
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()
    return {
        "e2e_ms": summarize(e2e),
        "burst_acked_ms": {
            "median": round(statistics.median(acked), 2),
            "max": round(max(acked), 2),
        },
        "burst_consumed_ms": {
            "median": round(statistics.median(consumed), 2),
            "max": round(max(consumed), 2),
        },
        "burst_records_per_s": round(shape.burst_size / (statistics.median(acked) / 1000)),
    }


async def _fill(bootstrap: str, topic: str, batches: int, producers: int) -> None:
    """Append ``batches`` single-record batches (each producer has one request in flight)."""

    async def one(count: int) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
        await producer.start()
        try:
            for _ in range(count):
                await producer.send_and_wait(topic, b"f" * 200)
        finally:
            await producer.stop()

    share = [batches // producers + (i < batches % producers) for i in range(producers)]
    await asyncio.gather(*(one(n) for n in share if n))


async def _cpu_pct(procs: list[psutil.Process], during: Awaitable[object]) -> list[float]:
    """Each process's CPU (% of one core) while ``during`` runs."""
    before, t0 = [sum(p.cpu_times()[:2]) for p in procs], time.perf_counter()
    await during
    wall = time.perf_counter() - t0
    after = [sum(p.cpu_times()[:2]) for p in procs]
    return [round((b - a) / wall * 100, 1) for a, b in zip(before, after, strict=True)]


async def _idle_fetch_cost(
    c: _Client, shape: BrokerBenchShape, broker_pid: int, s3_pid: int | None
) -> list[dict[str, Any]]:
    topic = await c.topic()
    tp = TopicPartition(topic, 0)
    procs = [psutil.Process(broker_pid), *([psutil.Process(s3_pid)] if s3_pid else [])]
    rows, filled = [], 0
    for target in shape.fill:
        t0 = time.perf_counter()
        await _fill(c.bootstrap, topic, target - filled, shape.fill_producers)
        log.info("bench broker: filled", batches=target)
        fill_s, filled = time.perf_counter() - t0, target
        quiet = await _cpu_pct(procs, asyncio.sleep(shape.idle_s))  # nobody fetching
        consumer = c.consumer(shape.fetch_max_wait_ms)
        await consumer.start()
        try:
            consumer.assign([tp])
            consumer.seek(tp, target)  # the batches written so far, one record each
            parked = await _cpu_pct(  # one consumer parked at the end, as the service's
                procs, consumer.getmany(tp, timeout_ms=int(shape.idle_s * 1000))
            )
            tail, too_slow = [], False
            for _ in range(5 if target else 0):
                consumer.seek(tp, target - 1)
                f0 = time.perf_counter()
                try:
                    async with asyncio.timeout(shape.tail_timeout_s):
                        await consumer.getone(tp)
                except TimeoutError:
                    too_slow = True
                    break
                tail.append((time.perf_counter() - f0) * 1000)
        finally:
            await consumer.stop()
        rows.append({
            "batches": target,
            "fill_s": round(fill_s, 2),
            "broker_cpu_pct": {"quiet": quiet[0], "parked_fetch": parked[0]},
            "s3_server_cpu_pct": (
                {"quiet": quiet[1], "parked_fetch": parked[1]} if len(procs) > 1 else None
            ),
            "fetch_tail_ms": (
                f">{shape.tail_timeout_s * 1000:.0f}" if too_slow
                else round(statistics.median(tail), 2) if tail else None
            ),
        })  # fmt: skip
        if too_slow:  # more batches would only be slower
            break
    return rows


async def bench_storage(
    settings: Settings, storage: Storage, shape: BrokerBenchShape, work_dir: Path
) -> dict[str, Any]:
    """One private stack with this broker storage, measured, then removed."""
    private = settings.model_copy(
        update={
            "state_dir": work_dir / storage,
            "broker_storage": storage,
            "database_url": None,
            "kafka_bootstrap": None,
            "s3": settings.s3.model_copy(update={"endpoint_url": None}),
        }
    )
    stack = Stack(private)
    endpoints = await stack.up()
    try:
        broker, s3 = stack.server("broker"), stack.server("s3")
        assert broker.pid is not None
        async with _Client(endpoints.kafka_bootstrap) as c, asyncio.timeout(shape.timeout_s):
            log.info("bench broker: produce latency", storage=storage)
            produce = await _produce_latency(c, shape.produce)
            log.info("bench broker: produce -> consume, bursts", storage=storage)
            flows = await _e2e_and_bursts(c, shape)
            log.info("bench broker: idle fetch cost", storage=storage, fill=shape.fill)
            idle = await _idle_fetch_cost(c, shape, broker.pid, s3.pid)
        return {"storage": storage, "produce_ms": summarize(produce), **flows, "idle_fetch": idle}
    finally:
        stack.down(purge=True)


async def run_broker_bench(
    settings: Settings, storages: list[Storage], shape: BrokerBenchShape, work_dir: Path
) -> dict[str, Any]:
    results = {s: await bench_storage(settings, s, shape, work_dir) for s in storages}
    return {"shape": asdict(shape), "cpus": psutil.cpu_count(), "results": results}
