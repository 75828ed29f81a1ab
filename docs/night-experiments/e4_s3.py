"""E4: the same fetch-cost-vs-objects measurement (E1) with tansu's S3 storage engine on
SeaweedFS (weed mini, local, no auth), i.e. the durable broker under consideration."""
import asyncio, os, subprocess, sys, time
from pathlib import Path
import urllib.request
from kit import *
from prompt.stack.processes import wait_until, port_open
from e1b import one  # noqa

PORTS = ("s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port",
         "volume.port.grpc", "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc")

async def main():
    d = Path("/tmp/e4"); (d / "store").mkdir(parents=True, exist_ok=True)
    ports = {p: free_port() for p in PORTS}
    weed = subprocess.Popen([".venv/bin/weed", "mini", f"-dir={d/'store'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        *(f"-{k}={v}" for k, v in ports.items()), "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
        "-admin.ui=false", "-master.telemetry=false"], stdout=open(d / "weed.log", "ab"), stderr=subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin", "TMPDIR": str(d)})
    tansu = None
    try:
        url = f"http://127.0.0.1:{ports['s3.port']}"
        wait_until(lambda: port_open("127.0.0.1", ports["s3.port"]), timeout=60, what="weed s3")
        for _ in range(60):
            try:
                urllib.request.urlopen(urllib.request.Request(url + "/tansu", method="PUT"), timeout=5); break
            except Exception as e:
                last = e; time.sleep(1)
        else:
            raise RuntimeError(f"bucket: {last}")
        port = free_port()
        env = {"PATH": "/usr/bin:/bin", "AWS_ENDPOINT": url, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "x",
               "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"}
        tansu = subprocess.Popen([str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url", f"tcp://127.0.0.1:{port}", "--storage-engine", "s3://tansu/"],
            stdout=open(d / "tansu.log", "ab"), stderr=subprocess.STDOUT, env=env)
        wait_until(lambda: port_open("127.0.0.1", port), timeout=30, what="tansu")
        bs = f"127.0.0.1:{port}"
        admin = AIOKafkaAdminClient(bootstrap_servers=bs); await admin.start()
        await admin.create_topics([NewTopic("small", 1, 1)]); await admin.close()
        print("S3 engine: objects | wait=10: ms  empty | wait=100: ms  empty | wait=2000: ms  empty | fill s", flush=True)
        total = 0
        for target in [int(a) for a in sys.argv[1].split(",")]:
            t = time.monotonic()
            await fill(bs, "small", target - total, 1); total = target
            ft = time.monotonic() - t
            row = []
            for wait in (10, 100, 2000):
                med, e, n = await one(bs, "small", wait, n=5)
                row.append(f"{med:8.1f}  {e}/{n}")
            print(f"{total:7} | " + " | ".join(row) + f" | {ft:.0f}", flush=True)
    finally:
        if tansu: tansu.terminate(); tansu.wait(10)
        weed.terminate(); weed.wait(20)
asyncio.run(main())
