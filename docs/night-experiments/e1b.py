"""E1: fetch of the partition's last batch vs how many batch objects the partition holds.
For fetch_max_wait 10 / 100 / 2000 ms: latency of a fetch with data ready, and whether it
returns the data at all. Also the same number of records in 1000-record batches."""
import asyncio, sys, time
from kit import *

async def one(bs, topic, wait, n=9):
    cons = AIOKafkaConsumer(bootstrap_servers=bs, enable_auto_commit=False, fetch_max_wait_ms=wait,
                            request_timeout_ms=60000)
    await cons.start(); tp = TopicPartition(topic, 0); cons.assign([tp])
    cons.seek(tp, 0); await cons.getmany(tp, timeout_ms=5000)
    end = cons.highwater(tp)
    ts, empties = [], 0
    for _ in range(n):
        cons.seek(tp, end - 1)
        t = time.perf_counter()
        got = await cons.getmany(tp, timeout_ms=wait * 3 + 50)
        if got:
            ts.append((time.perf_counter() - t) * 1e3)
        else:
            empties += 1
    await cons.stop()
    med = sorted(ts)[len(ts) // 2] if ts else float("nan")
    return med, empties, n

async def main():
    broker = EmbeddedBroker(Path("/tmp/e1b"), free_port()); broker.start()
    bs = broker.bootstrap
    proc = psutil.Process(broker.pid)
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=bs); await admin.start()
        await admin.create_topics([NewTopic("small", 1, 1), NewTopic("big", 1, 1)]); await admin.close()
        print("objects  records | wait=10: ms  empty | wait=100: ms  empty | wait=2000: ms  empty | rss MB", flush=True)
        total = 0
        for target in [int(a) for a in sys.argv[1].split(",")]:
            await fill(bs, "small", target - total, 1); total = target
            row = []
            for wait in (10, 100, 2000):
                med, e, n = await one(bs, "small", wait)
                row.append(f"{med:8.1f}  {e}/{n}")
            print(f"{total:7} {total:8} | " + " | ".join(row) + f" | {proc.memory_info().rss/2**20:.0f}", flush=True)
        await fill(bs, "big", 200, 1000)
        row = []
        for wait in (10, 100, 2000):
            med, e, n = await one(bs, "big", wait)
            row.append(f"{med:8.1f}  {e}/{n}")
        print(f"{200:7} {200000:8} | " + " | ".join(row) + "   (big topic: 1000-record batches)", flush=True)
    finally: broker.stop()
if __name__ == '__main__':
    asyncio.run(main())
