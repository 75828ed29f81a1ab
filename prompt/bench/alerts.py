"""``prompt bench alerts``: the pilot's alert producer, aiokafka against confluent-kafka.

Both :class:`~prompt.pilot.alerts.AlertPublisher` implementations publish to the same broker
(the embedded one, or ``PROMPT_KAFKA_BOOTSTRAP``) in one run, with the same settings (acks=all,
linger 2 ms, no compression), interleaved round by round so that neither gets a quieter
machine. Alerts are random bytes of the given size (cutouts are compressed FITS: they do not
compress further).

- ``job``: one job's alerts at a time, ``publish()`` call -> every alert acknowledged, for a
  few batch sizes (a detector yields a few to tens of alerts);
- ``burst``: many jobs publishing at once (a visit's detectors finishing together on one
  pilot): per-job latency and alerts/s over the burst;
- ``cpu_us_per_alert``: process CPU time (all threads, librdkafka's included) per alert.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prompt.config import Settings, Topics
from prompt.kafka import aiokafka_options, confluent_config, ensure_topics
from prompt.pilot.alerts import (
    LINGER_MS,
    AlertPublisher,
    ConfluentAlertPublisher,
    KafkaAlertPublisher,
)
from prompt.stack import owned_stack
from prompt.stats import summarize

IMPLEMENTATIONS = ("aiokafka", "confluent-kafka")


@dataclass(frozen=True)
class AlertBenchShape:
    alert_kb: float = 25.0
    batches: tuple[int, ...] = (5, 20, 50)
    jobs: int = 40
    """Sequential jobs per batch size per round."""
    burst_jobs: int = 96
    burst_alerts: int = 20
    rounds: int = 3
    warmup_jobs: int = 10


def publisher(name: str, settings: Settings, bootstrap: str, topic: str) -> AlertPublisher:
    if name == "aiokafka":
        return KafkaAlertPublisher(aiokafka_options(settings, bootstrap), topic)
    return ConfluentAlertPublisher(confluent_config(settings, bootstrap), topic)


async def run_alert_bench(settings: Settings, shape: AlertBenchShape) -> dict[str, Any]:
    async with owned_stack(settings) as endpoints:
        return await _run(settings, endpoints.kafka_bootstrap, shape)


async def _run(settings: Settings, bootstrap: str, shape: AlertBenchShape) -> dict[str, Any]:
    settings = settings.with_overrides(topics=Topics().suffixed(f"bench-{uuid.uuid4().hex[:8]}"))
    await ensure_topics(settings, bootstrap)
    topic = settings.topics.alerts
    alert = os.urandom(int(shape.alert_kb * 1024))
    pubs = {name: publisher(name, settings, bootstrap, topic) for name in IMPLEMENTATIONS}
    job_ms: dict[str, dict[int, list[float]]] = {n: {b: [] for b in shape.batches} for n in pubs}
    burst_job_ms: dict[str, list[float]] = {n: [] for n in pubs}
    burst_rate: dict[str, list[float]] = {n: [] for n in pubs}
    cpu_s = dict.fromkeys(pubs, 0.0)
    alerts_sent = dict.fromkeys(pubs, 0)
    try:
        for pub in pubs.values():
            await pub.start()
            for _ in range(shape.warmup_jobs):
                await pub.publish([alert] * max(shape.batches))
        for r in range(shape.rounds):
            order = list(pubs) if r % 2 == 0 else list(reversed(pubs))
            for name in order:
                pub = pubs[name]
                cpu0 = time.process_time()
                for batch in shape.batches:
                    values = [alert] * batch
                    for _ in range(shape.jobs):
                        job_ms[name][batch].append(await _timed(pub.publish, values))
                    alerts_sent[name] += batch * shape.jobs
                values = [alert] * shape.burst_alerts
                start = time.perf_counter()
                latencies = await asyncio.gather(
                    *(_timed(pub.publish, values) for _ in range(shape.burst_jobs))
                )
                wall = time.perf_counter() - start
                cpu_s[name] += time.process_time() - cpu0
                alerts_sent[name] += shape.burst_jobs * shape.burst_alerts
                burst_job_ms[name].extend(latencies)
                burst_rate[name].append(shape.burst_jobs * shape.burst_alerts / wall)
                print(f"  round {r + 1}/{shape.rounds} {name} done", flush=True)
    finally:
        for pub in pubs.values():
            await pub.stop()
    result: dict[str, Any] = {
        "alert_bytes": len(alert),
        "shape": {
            "batches": list(shape.batches),
            "jobs_per_batch_per_round": shape.jobs,
            "burst_jobs": shape.burst_jobs,
            "burst_alerts": shape.burst_alerts,
            "rounds": shape.rounds,
        },
        "settings": {"acks": "all", "linger_ms": LINGER_MS, "compression": "none"},
    }
    for name in pubs:
        rates = sorted(burst_rate[name])
        result[name] = {
            "job_ms": {str(b): summarize(v) for b, v in job_ms[name].items()},
            "burst_job_ms": summarize(burst_job_ms[name]),
            "burst_alerts_per_s": round(rates[len(rates) // 2]),
            "cpu_us_per_alert": round(cpu_s[name] / alerts_sent[name] * 1e6, 1),
        }
    a, c = result["aiokafka"], result["confluent-kafka"]
    result["confluent_vs_aiokafka"] = {
        "burst_alerts_per_s": round(c["burst_alerts_per_s"] / a["burst_alerts_per_s"], 2),
        **{
            f"job_ms_p50[{b}]": round(c["job_ms"][b]["p50"] / a["job_ms"][b]["p50"], 2)
            for b in a["job_ms"]
        },
        "cpu_us_per_alert": round(c["cpu_us_per_alert"] / a["cpu_us_per_alert"], 2),
    }
    return result


async def _timed(fn: Callable[[list[bytes]], Any], values: list[bytes]) -> float:
    start = time.perf_counter()
    await fn(values)
    return (time.perf_counter() - start) * 1000
