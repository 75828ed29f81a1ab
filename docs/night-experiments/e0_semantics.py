"""E0: how the embedded tansu answers fetches: data present -> immediately or at max_wait?
idle -> at max_wait? data arriving mid-wait -> when?"""
import asyncio, time
from kit import *

async def main():
    broker = EmbeddedBroker(Path("/tmp/e0"), free_port()); broker.start()
    bs = broker.bootstrap
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=bs); await admin.start()
        await admin.create_topics([NewTopic("small", 1, 1)]); await admin.close()
        await fill(bs, "small", 10, 1)
        for wait in (10, 100, 500):
            cons = AIOKafkaConsumer(bootstrap_servers=bs, enable_auto_commit=False, fetch_max_wait_ms=wait)
            await cons.start(); tp = TopicPartition("small", 0); cons.assign([tp])
            cons.seek(tp, 5); await cons.getmany(tp, timeout_ms=3000)  # warm
            ts = []
            for _ in range(5):
                cons.seek(tp, 5); t = time.perf_counter(); got = await cons.getmany(tp, timeout_ms=3000)
                ts.append((time.perf_counter() - t) * 1e3)
            # idle then data mid-wait
            prod = AIOKafkaProducer(bootstrap_servers=bs, linger_ms=0, enable_idempotence=False); await prod.start()
            hw = cons.highwater(tp); cons.seek(tp, hw)
            mids = []
            for _ in range(5):
                pos = await cons.position(tp)
                t = time.perf_counter()
                async def later():
                    await asyncio.sleep(wait / 1000 * 0.3)
                    return time.perf_counter()
                task = asyncio.create_task(later())
                sent_at = await task
                await prod.send_and_wait("small", b"y")
                sent_at = time.perf_counter()
                got = await cons.getmany(tp, timeout_ms=3000)
                while not got:
                    got = await cons.getmany(tp, timeout_ms=3000)
                mids.append((time.perf_counter() - sent_at) * 1e3)
            await prod.stop(); await cons.stop()
            print(f"max_wait {wait:4} ms: fetch with data ready {sorted(ts)[2]:.1f} ms; produce->consumed "
                  f"(consumer parked) median {sorted(mids)[2]:.1f} ms, all {[round(m,1) for m in mids]}")
    finally: broker.stop()
asyncio.run(main())
