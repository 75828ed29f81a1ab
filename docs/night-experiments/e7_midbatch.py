import asyncio
from kit import *
async def m():
    broker = EmbeddedBroker(Path("/tmp/e7"), free_port()); broker.start()
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap); await admin.start()
        await admin.create_topics([NewTopic("small", 1, 1)]); await admin.close()
        await fill(broker.bootstrap, "small", 3, 10)
        for off in (0, 5, 10, 15, 29): await probe(broker.bootstrap, off)
    finally: broker.stop()
asyncio.run(m())
