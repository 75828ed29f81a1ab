"""``prompt bench s3``: S3 client candidates on a real S3 server (the embedded SeaweedFS).

The pipeline's three access patterns, each timed per client: a GET of one calibration-sized
object (256x256 float32 FITS, ~260 KB) and of a 4k x 4k one (~64 MB) to see the trend, the 4
concurrent GETs of a detector's calibrations, and a ranged GET of the first FITS header
blocks (what a bucket notification needs). Clients not installed are skipped: the service
ships one (see docs/storage.md), the others are installed only to compare.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prompt.calib.s3store import S3Store
from prompt.config import S3Settings

HEADER_BYTES = 2880 * 2

Getter = Callable[[str], bytes]
RangeGetter = Callable[[str, int], bytes]


def _fits_bytes(n: int) -> bytes:
    header = (
        "SIMPLE  =                    T".ljust(80)
        + "BITPIX  =                  -32".ljust(80)
        + "NAXIS   =                    2".ljust(80)
        + f"NAXIS1  = {n:20d}".ljust(80)
        + f"NAXIS2  = {n:20d}".ljust(80)
        + "END".ljust(80)
    ).ljust(2880 * 2)
    return header.encode() + bytes(4 * n * n)


def _stats(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in samples)
    return {
        "median_ms": round(statistics.median(ms), 3),
        "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 3),
        "n": len(ms),
    }


def _time(fn: Callable[[], object], repeat: int) -> dict[str, float]:
    fn()  # connection set-up and first-call costs are not the hot path's
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return _stats(samples)


async def _atime(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    await fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t0)
    return _stats(samples)


def _sync_patterns(
    get: Getter, get_range: RangeGetter, keys: dict[str, Any], repeat: int
) -> dict[str, Any]:
    pool = concurrent.futures.ThreadPoolExecutor(4)
    try:
        return {
            "get_260k": _time(lambda: get(keys["small"]), repeat),
            "get_64m": _time(lambda: get(keys["large"]), max(3, repeat // 10)),
            "get_4_concurrent": _time(lambda: list(pool.map(get, keys["four"])), repeat),
            "range_header": _time(lambda: get_range(keys["small"], HEADER_BYTES), repeat),
        }
    finally:
        pool.shutdown()


def _obstore(s3: S3Settings, bucket: str) -> tuple[Getter, RangeGetter]:
    store = S3Store(s3, bucket)
    return store.get, lambda key, n: store.get_range(key, 0, n)


def _boto3(s3: S3Settings, bucket: str) -> tuple[Getter, RangeGetter]:
    from prompt.s3 import client_options

    boto3 = importlib.import_module("boto3")  # a candidate, not a dependency: untyped here
    client = boto3.session.Session().client("s3", **client_options(s3))

    def get(key: str) -> bytes:
        return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())

    def get_range(key: str, n: int) -> bytes:
        body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{n - 1}")["Body"]
        return bytes(body.read())

    return get, get_range


def _lsst_resources(s3: S3Settings, bucket: str) -> tuple[Getter, RangeGetter]:
    import os

    ResourcePath = importlib.import_module("lsst.resources").ResourcePath

    os.environ["S3_ENDPOINT_URL"] = s3.endpoint_url or ""
    os.environ["AWS_ACCESS_KEY_ID"] = s3.access_key_id or ""
    os.environ["AWS_SECRET_ACCESS_KEY"] = (
        s3.secret_access_key.get_secret_value() if s3.secret_access_key else ""
    )

    def get(key: str) -> bytes:
        return bytes(ResourcePath(f"s3://{bucket}/{key}").read())

    def get_range(key: str, n: int) -> bytes:
        return bytes(ResourcePath(f"s3://{bucket}/{key}").read(size=n))

    return get, get_range


async def _aiobotocore(s3: S3Settings, bucket: str, keys: dict[str, Any], repeat: int) -> Any:
    from prompt.s3 import s3_client

    async with s3_client(s3) as client:

        async def get(key: str) -> bytes:
            resp = await client.get_object(Bucket=bucket, Key=key)
            async with resp["Body"] as body:
                return await body.read()

        async def get_range(key: str) -> bytes:
            resp = await client.get_object(
                Bucket=bucket, Key=key, Range=f"bytes=0-{HEADER_BYTES - 1}"
            )
            async with resp["Body"] as body:
                return await body.read()

        async def four() -> None:
            await asyncio.gather(*(get(k) for k in keys["four"]))

        return {
            "get_260k": await _atime(lambda: get(keys["small"]), repeat),
            "get_64m": await _atime(lambda: get(keys["large"]), max(3, repeat // 10)),
            "get_4_concurrent": await _atime(four, repeat),
            "range_header": await _atime(lambda: get_range(keys["small"]), repeat),
        }


async def _obstore_async(s3: S3Settings, bucket: str, keys: dict[str, Any], repeat: int) -> Any:
    store = S3Store(s3, bucket)

    async def four() -> None:
        await asyncio.gather(*(store.get_async(k) for k in keys["four"]))

    return {
        "get_260k": await _atime(lambda: store.get_async(keys["small"]), repeat),
        "get_64m": await _atime(lambda: store.get_async(keys["large"]), max(3, repeat // 10)),
        "get_4_concurrent": await _atime(four, repeat),
        "range_header": await _atime(
            lambda: store.get_range_async(keys["small"], 0, HEADER_BYTES), repeat
        ),
    }


async def put_rate(
    s3: S3Settings, bucket: str, count: int, concurrency: int = 32
) -> dict[str, Any]:
    """The replay's camera: ``count`` header-only objects (5,760 bytes) PUT with the service's
    client, ``concurrency`` in flight. Can the night at 20x (376 k images) PUT each one?"""
    store = S3Store(s3, bucket)
    body = _fits_bytes(0)[:HEADER_BYTES]
    prefix = f"bench-put-{uuid.uuid4().hex[:8]}"
    limit = asyncio.Semaphore(concurrency)
    put_s: list[float] = []

    async def one(i: int) -> None:
        async with limit:
            t0 = time.perf_counter()
            await store.put_async(f"{prefix}/{i}.fits", body)
            put_s.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    wall = time.perf_counter() - t0
    return {"puts": count, "concurrency": concurrency, "per_s": round(count / wall, 1),
            **_stats(put_s)}  # fmt: skip


def preload_per_job(s3: S3Settings, detectors: int = 8, repeat: int = 5) -> dict[str, Any]:
    """What a pilot's preload costs per job, S3 vs file: the simulator's 4 objects of a
    detector (bias, dark, flat, template) loaded at once through ``StoreCalibrations`` (GET,
    FITS parse, copy into shared memory) on 4 threads, as the pilot does; fresh source each
    time (nothing cached)."""
    from prompt.calib.objectstore import FileStore, ObjectStore
    from prompt.calib.regions import region_of
    from prompt.calib.source import StoreCalibrations
    from prompt.sim import SimConfig, SimVisit, generate
    from prompt.sim.publish import publish_calibrations, store_prefix

    config = SimConfig(seed=3)
    region = region_of(150.0, -30.0)
    visit = SimVisit(20261123, 1, "bench", "r_57", region.ra, region.dec)
    with tempfile.TemporaryDirectory(prefix="prompt-s3-preload-") as tmp:
        root = Path(tmp)
        generate(root, [visit], range(detectors), config, processes=1)
        s3_store = S3Store(s3, s3.bucket_calib, store_prefix(config))
        publish_calibrations(root, s3_store, config)
        stores: dict[str, ObjectStore] = {"file": FileStore(root), "s3": s3_store}
        pool = concurrent.futures.ThreadPoolExecutor(4)
        samples: dict[str, list[float]] = {name: [] for name in stores}
        try:
            for _ in range(repeat):
                for name, store in stores.items():
                    for d in range(detectors):
                        source = StoreCalibrations(store)
                        fields = {
                            "instrument": "LSSTCam", "detector": d, "filter": "r_57",
                            "day_obs": visit.day_obs, "ra": visit.ra, "dec": visit.dec,
                        }  # fmt: skip
                        t0 = time.perf_counter()
                        entries = list(pool.map(source.load, source.keys_for(fields)))
                        samples[name].append(time.perf_counter() - t0)
                        for e in entries:
                            e.release()
        finally:
            pool.shutdown()
    return {name: _stats(xs) for name, xs in samples.items()}


SYNC = {"obstore": _obstore, "boto3": _boto3, "lsst-resources": _lsst_resources}
ASYNC = {"aiobotocore": _aiobotocore, "obstore-async": _obstore_async}


async def run_s3_bench(s3: S3Settings | None, repeat: int = 50, puts: int = 2000) -> dict[str, Any]:
    """Time every installed candidate on ``s3`` (None: a SeaweedFS server of its own)."""
    if s3 is None:
        from prompt.stack.seaweed import EmbeddedS3, stack_credentials

        with tempfile.TemporaryDirectory(prefix="prompt-s3-bench-") as tmp:
            data = Path(tmp) / "s3"
            creds = stack_credentials(data)
            server = EmbeddedS3(data, creds.access_key_id)
            await server.start(tie_to_parent=True)
            try:
                own = S3Settings(
                    endpoint_url=server.endpoint_url, access_key_id=creds.access_key_id,
                    secret_access_key=creds.secret,  # type: ignore[arg-type]
                )  # fmt: skip
                return await run_s3_bench(own, repeat, puts)
            finally:
                server.stop()
    from prompt.s3 import ensure_buckets, s3_client

    bucket = s3.bucket_calib
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    keys: dict[str, Any] = {
        "small": f"{prefix}/small.fits",
        "large": f"{prefix}/large.fits",
        "four": [f"{prefix}/calib{i}.fits" for i in range(4)],
    }
    small, large = _fits_bytes(256), _fits_bytes(4096)
    async with s3_client(s3) as client:
        await ensure_buckets(client, s3)
        put_s = []
        for key in [keys["small"], *keys["four"]]:
            t0 = time.perf_counter()
            await client.put_object(Bucket=bucket, Key=key, Body=small)
            put_s.append(time.perf_counter() - t0)
        await client.put_object(Bucket=bucket, Key=keys["large"], Body=large)
    result: dict[str, Any] = {
        "endpoint": s3.endpoint_url,
        "sizes": {"small": len(small), "large": len(large), "range": HEADER_BYTES},
        "put_260k_aiobotocore": _stats(put_s),
        "put_header_only_obstore": await put_rate(s3, bucket, puts) if puts else None,
        "preload_per_job_4_objects": await asyncio.to_thread(preload_per_job, s3),
        "clients": {},
    }
    for name, make in SYNC.items():
        try:
            get, get_range = make(s3, bucket)
        except ImportError as exc:
            result["clients"][name] = f"not installed ({exc.name})"
            continue
        result["clients"][name] = await asyncio.to_thread(
            _sync_patterns, get, get_range, keys, repeat
        )
    for name, run in ASYNC.items():
        try:
            result["clients"][name] = await run(s3, bucket, keys, repeat)
        except ImportError as exc:
            result["clients"][name] = f"not installed ({exc.name})"
    return result
