"""E1: cost of one fetch vs how many batches (objects) the partition holds, and vs records.

Fill one topic with N single-record batches (or N records in big batches), then time fetches
of the last batch (fetch_max_wait_ms=0 is not allowed by aiokafka; use 1) and idle fetches.
"""

import asyncio
import sys
import time
from pathlib import Path

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from prompt.stack.broker import EmbeddedBroker, tansu_binary
from prompt.stack.processes import free_port


def cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


async def fill(bootstrap: str, topic: str, batches: int, per_batch: int, partition: int = 0) -> None:
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, enable_idempotence=False,
                            max_batch_size=1 << 20)
    await prod.start()
    value = b"x" * 150
    try:
        for i in range(0, batches, 64):
            futs = []
            for _ in range(min(64, batches - i)):
                b = prod.create_batch()
                for _ in range(per_batch):
                    b.append(key=None, value=value, timestamp=None)
                b.close()
                futs.append(await prod.send_batch(b, topic, partition=partition))
            await asyncio.gather(*futs)
    finally:
        await prod.stop()


async def time_fetches(bootstrap: str, topic: str, n: int) -> tuple[float, float]:
    """ms per fetch that returns the last batch; ms per idle fetch at the end."""
    cons = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                            fetch_max_wait_ms=1)
    await cons.start()
    tp = TopicPartition(topic, 0)
    cons.assign([tp])
    cons.seek(tp, 0)
    await cons.getmany(tp, timeout_ms=2000)
    end = cons.highwater(tp)
    listed = (await cons.end_offsets([tp]))[tp]
    if listed != end:
        print(f"  (list_offsets says end {listed}, fetch highwater {end})")
    data = []
    for _ in range(n):
        cons.seek(tp, end - 1)
        t = time.perf_counter()
        got = await cons.getmany(tp, timeout_ms=2000)
        data.append(time.perf_counter() - t)
        if not got:
            print(f"  iteration {_}: empty (end {end}, position {await cons.position(tp)})")
    idle = []
    cons.seek(tp, end)
    for _ in range(n):
        t = time.perf_counter()
        await cons.getmany(tp, timeout_ms=1)
        idle.append(time.perf_counter() - t)
    await cons.stop()
    data.sort()
    idle.sort()
    return data[len(data) // 2] * 1e3, idle[len(idle) // 2] * 1e3



async def probe(bs, off, topic="small"):
    cons = AIOKafkaConsumer(bootstrap_servers=bs, enable_auto_commit=False, fetch_max_wait_ms=1)
    await cons.start(); tp = TopicPartition(topic, 0); cons.assign([tp])
    cons.seek(tp, off); got = await cons.getmany(tp, timeout_ms=1000)
    print(off, "->", [m.offset for v in got.values() for m in v][:3], "hw", cons.highwater(tp), flush=True)
    await cons.stop()
