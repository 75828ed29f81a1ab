"""E9: broker CPU of one idle consumer (caught up, 10 ms fetch wait) vs partitions of its topic;
and the cost of a data fetch when each partition holds 3,500 objects (16 partitions) vs one holding 55,000."""
import asyncio, time
from kit import *

async def idle_cpu(bs, topic, proc, seconds=10.0):
    cons = AIOKafkaConsumer(bootstrap_servers=bs, enable_auto_commit=False, fetch_max_wait_ms=10)
    await cons.start()
    tps = [TopicPartition(topic, p) for p in cons.partitions_for_topic(topic)]
    cons.assign(tps); await cons.seek_to_end()
    await cons.getmany(timeout_ms=500)
    c0, t0 = cpu_s(proc), time.monotonic()
    end = t0 + seconds
    n = 0
    while time.monotonic() < end:
        await cons.getmany(timeout_ms=100); n += 1
    c1 = cpu_s(proc)
    await cons.stop()
    return 100 * (c1 - c0) / (time.monotonic() - t0)

async def main():
    broker = EmbeddedBroker(Path("/tmp/e9"), free_port()); broker.start()
    bs = broker.bootstrap; proc = psutil.Process(broker.pid)
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=bs); await admin.start()
        await admin.create_topics([NewTopic(f"t{p}", p, 1) for p in (1, 4, 16, 32)]); await admin.close()
        for p in (1, 4, 16, 32):
            for part in range(p):
                await fill(bs, f"t{p}", 2, 1, partition=part)
            print(f"partitions {p:2}: broker CPU with one idle consumer at 10 ms wait: {await idle_cpu(bs, f't{p}', proc):.1f} % of a core", flush=True)
    finally: broker.stop()
asyncio.run(main())
