"""``prompt demo``: the README's main job.

Brings up the embedded stack, sends next-visit events for a short stretch of night through the
broker in Confluent-framed Avro, consumes and decodes them, and prints a latency summary.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from prompt.cli.common import print_json
from prompt.config import Settings
from prompt.events import AvroCodec, EventKind, LocalSchemaRegistry, NextVisit
from prompt.kafka import aiokafka_options
from prompt.stack import Stack
from prompt.stats import summarize

TAI_MINUS_UTC = 37.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="round-trip a stretch of night's next-visits through Kafka")
    p.add_argument("--visits", type=int, default=200, help="next-visit events to send")
    p.add_argument("--keep", action="store_true", help="leave the embedded stack running")
    p.set_defaults(handler=run)


def synthetic_next_visit(i: int, now: float) -> NextVisit:
    """A plausible LSSTCam survey visit: 38 s cadence, announced 20 s ahead."""
    start = now + 20.0 + 38.0 * i
    group = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start)) + f".{i % 1000:03d}"
    return NextVisit(
        instrument="LSSTCam",
        group_id=group,
        survey="BLOCK-365",
        filters="ugrizy"[2 + i % 3] + "_57",
        position=((150.0 + 0.5 * i) % 360.0, -30.0 + (i % 20)),
        coordinate_system=2,
        camera_angle=(17.0 * i) % 360.0,
        rotation_system=2,
        start_time=start + TAI_MINUS_UTC,
        duration=30.0,
        nimages=1,
        dome=2,
        sal_index=1,
        script_sal_index=100_000 + i,
        efd_stamp=now,
    )


async def round_trip(settings: Settings, bootstrap: str, visits: int) -> dict[str, object]:
    codec = AvroCodec(EventKind.NEXT_VISIT, LocalSchemaRegistry())
    topic = settings.topics.next_visit
    opts = aiokafka_options(settings, bootstrap)
    producer = AIOKafkaProducer(**opts, linger_ms=0)
    consumer = AIOKafkaConsumer(**opts, enable_auto_commit=False, fetch_max_wait_ms=5)
    await producer.start()
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, end)
        sent: dict[str, float] = {}
        latencies: list[float] = []
        first: dict[str, object] | None = None
        now = time.time()
        for i in range(visits):
            nv = synthetic_next_visit(i, now)
            value = codec.encode(nv.to_record())
            sent[nv.group_id] = time.perf_counter()
            await producer.send_and_wait(topic, value, key=nv.group_id.encode(), partition=0)
            batch = await consumer.getmany(tp, timeout_ms=2000)
            for msg in batch.get(tp, []):
                record = await codec.decode(msg.value)
                latencies.append((time.perf_counter() - sent.pop(record["groupId"])) * 1e3)
                first = first or record
        while sent:
            batch = await consumer.getmany(tp, timeout_ms=2000)
            if not batch:
                break
            for msg in batch.get(tp, []):
                record = await codec.decode(msg.value)
                latencies.append((time.perf_counter() - sent.pop(record["groupId"])) * 1e3)
        return {
            "sent": visits,
            "received": len(latencies),
            "lost": len(sent),
            "round_trip_ms": summarize(latencies),
            "first_decoded": first,
        }
    finally:
        await consumer.stop()
        await producer.stop()


async def _run(settings: Settings, visits: int, keep: bool) -> dict[str, object]:
    stack = Stack(settings)
    t0 = time.perf_counter()
    endpoints = await stack.up()
    up_s = time.perf_counter() - t0
    try:
        result = await round_trip(settings, endpoints.kafka_bootstrap, visits)
    finally:
        if not keep:
            stack.down()
    return {"stack_up_s": round(up_s, 3), **result}


def run(args: argparse.Namespace, settings: Settings) -> int:
    result = asyncio.run(_run(settings, args.visits, args.keep))
    print("first next-visit as decoded after the round trip:")
    print_json(result.pop("first_decoded"))
    lat = result["round_trip_ms"]
    assert isinstance(lat, dict)
    print(
        f"\nnext-visit round trip (produce -> broker -> consume -> Avro decode), "
        f"{result['received']}/{result['sent']} events, lost {result['lost']}:\n"
        f"  p50 {lat['p50']:.2f} ms  p95 {lat['p95']:.2f} ms  p99 {lat['p99']:.2f} ms  "
        f"max {lat['max']:.2f} ms   (stack up in {result['stack_up_s']} s)"
    )
    print(orjson.dumps(result).decode())
    return 0 if result["lost"] == 0 else 1
