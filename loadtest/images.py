"""How the replay's camera delivers an image: the object to S3, then its bucket notification.

``S3Images`` is the summit's path: each raw is PUT to the raws bucket and only once the PUT
has succeeded is its notification (Ceph/AWS event structure, ``make_notification``) published
on the image topic; the dispatcher reads group and snap back from the object's header with a
ranged GET. The alert payload PUTs the simulator's raw; the sleep payload, which reads no
pixels, PUTs a header-only FITS placeholder (2 blocks). PUTs run concurrently (bounded), so a
burst of 189 does not hold up the driver's schedule. ``AvroImages`` keeps Avro image-arrival
events naming ``file://`` raws (tests without a server, and ``--avro-images``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from loadtest.schedule import PlannedVisit
from prompt.calib.objectstore import ObjectStoreError, open_store
from prompt.calib.s3store import S3Store
from prompt.config import S3Settings, Settings
from prompt.events import ImageArrival, make_notification
from prompt.instruments import obs_id, raw_key
from prompt.sim import SimConfig
from prompt.sim.publish import publish_calibrations
from prompt.stack import resolve_s3
from prompt.stats import percentile
from prompt.testing.traffic import EventSender

INSTRUMENT = "LSSTCam"


SNAP_SEQ_BASE = 100_000
"""Snaps of multi-snap visits are numbered from here: above any visit's own number (5 digits at
Rubin), so no two exposures of a night share an obs_id. They did when snaps were numbered
``seq_num * 10 + snap``: in the whole night through S3, ten twilight one-snap visits (seq_num
970-1011) shared their obs_id with the snaps of visits 97-101, and the dispatcher, which reads
one header per obs_id, gave their images to the older groups (10 visits expired)."""


def exposure_seq(v: PlannedVisit, snap: int) -> int:
    """The sequence number of a visit's snap: each snap is an exposure of its own (its own
    obs_id, so its own header read); a one-snap visit keeps the visit's number (the alert
    simulator's raws carry it)."""
    return v.seq_num if v.n_snaps == 1 else SNAP_SEQ_BASE + v.seq_num * 10 + snap


def exposure(v: PlannedVisit, snap: int, detector: int) -> tuple[str, str]:
    """A snap's obs_id and the object key of its raw of ``detector`` (by ``exposure_seq``):
    where ``S3Images`` PUTs the raw and what ``AvroImages`` names, so both paths give each
    exposure its own."""
    seq = exposure_seq(v, snap)
    return obs_id(INSTRUMENT, v.day_obs, seq), raw_key(INSTRUMENT, v.day_obs, seq, detector)


def placeholder_raw(group_id: str, snap: int, seq: int, day_obs: int) -> bytes:
    """A header-only FITS object: what the dispatcher reads of a raw, and nothing else."""
    cards = {
        "SIMPLE": "T", "BITPIX": "8", "NAXIS": "0", "INSTRUME": f"'{INSTRUMENT}'",
        "OBSID": f"'{obs_id(INSTRUMENT, day_obs, seq)}'", "GROUPID": f"'{group_id}'",
        "CURINDEX": str(snap + 1), "DAYOBS": str(day_obs), "SEQNUM": str(seq),
    }  # fmt: skip
    text = "".join(f"{k:<8}= {v:>20}".ljust(80) for k, v in cards.items()) + "END".ljust(80)
    return text.encode().ljust(2 * 2880, b" ")


class ImagePublisher(Protocol):
    async def publish(self, v: PlannedVisit, group_id: str, detector: int, snap: int) -> None:
        """Deliver one image (may return before it is delivered: see ``drain``)."""

    async def drain(self) -> None:
        """Wait until every image published so far is delivered."""

    async def warm(self) -> None:
        """Set up what the first image would otherwise pay for, before the schedule starts."""


@dataclass
class AvroImages:
    """Image-arrival events naming ``data_uri/{key}``. The alert payload reads those raws: the
    simulator's, one per visit and detector, as its visits have one snap (``for_alerts``),
    whose exposure keeps the visit's number."""

    sender: EventSender
    data_uri: str

    async def publish(self, v: PlannedVisit, group_id: str, detector: int, snap: int) -> None:
        oid, key = exposure(v, snap, detector)
        arrival = ImageArrival(
            instrument=INSTRUMENT, group_id=group_id, snap=snap, detector=detector,
            uri=f"{self.data_uri}/{key}", obs_id=oid, day_obs=v.day_obs, event_time=time.time(),
        )  # fmt: skip
        await self.sender.image(arrival)

    async def drain(self) -> None:
        """Avro arrivals are enqueued on the producer; nothing of ours is in flight."""

    async def warm(self) -> None:
        """The producer is started already."""


@dataclass
class S3Images:
    sender: EventSender
    s3: S3Settings
    raws_from: Path | None
    """The simulator's data root (alert payload: its raws are PUT); None: placeholders."""
    concurrency: int = 32
    put_ms: list[float] = field(default_factory=list)
    bytes_put: int = 0
    failed: list[str] = field(default_factory=list)
    """Keys whose PUT failed: no notification was sent for them (reported, not retried)."""

    def __post_init__(self) -> None:
        self._store = S3Store(self.s3, self.s3.bucket_raws)
        self._limit = asyncio.Semaphore(self.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    def _body(
        self, v: PlannedVisit, group_id: str, detector: int, snap: int
    ) -> Callable[[], bytes]:
        if self.raws_from is None:
            seq = exposure_seq(v, snap)
            return lambda: placeholder_raw(group_id, snap, seq, v.day_obs)
        path = self.raws_from / raw_key(INSTRUMENT, v.day_obs, v.seq_num, detector)
        return path.read_bytes

    async def publish(self, v: PlannedVisit, group_id: str, detector: int, snap: int) -> None:
        oid, key = exposure(v, snap, detector)
        body = self._body(v, group_id, detector, snap)
        # Never waits: the driver keeps its schedule; a slow S3 shows as later notifications
        # (and in put_ms), as a slow store would at the summit.
        task = asyncio.create_task(self._deliver(oid, key, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, oid: str, key: str, body: Callable[[], bytes]) -> None:
        async with self._limit:  # bounded in flight (and raws read from disk only then)
            data = body() if self.raws_from is None else await asyncio.to_thread(body)
            t0 = time.perf_counter()
            try:
                await self._store.put_async(key, data)
            except ObjectStoreError:
                self.failed.append(key)
                return
            self.put_ms.append((time.perf_counter() - t0) * 1e3)
        self.bytes_put += len(data)
        note = make_notification(self.s3.bucket_raws, key, event_time=time.time(), size=len(data))
        await self.sender.notification(note, oid.encode())

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    async def warm(self) -> None:
        """What the first burst of images must not pay for on the driver's schedule: the
        client and as many connections as PUTs run at once, and the server's first writes to
        the bucket (SeaweedFS allocates its volumes then); refused credentials fail here, before
        the run, not as one failed PUT per image. Small objects are left under ``warm-up/``;
        no notification is sent for them."""
        await asyncio.gather(
            *(self._store.put_async(f"warm-up/{i}", b"warm-up") for i in range(self.concurrency))
        )


async def calibrations_to_s3(
    root: Path, uri: str, s3: S3Settings, sim: SimConfig, *, quiet: bool
) -> None:
    """PUT the generated calibrations and templates the pilots will read (those missing)."""
    store = open_store(uri, s3)
    t0 = time.monotonic()
    count, nbytes = await asyncio.to_thread(publish_calibrations, root, store, sim)
    if not quiet:
        print(f"  calibrations in {uri}: {count} objects put ({nbytes / 1e6:.1f} MB) in "
              f"{time.monotonic() - t0:.1f} s", flush=True)  # fmt: skip


def image_publisher(
    kind: str, settings: Settings, sender: EventSender, *, raws_from: Path | None, avro_uri: str
) -> ImagePublisher:
    """``s3``: PUT + notification (``raws_from``: the simulator's root, else placeholders);
    ``avro``: image-arrival events naming ``avro_uri/{key}``."""
    if kind == "avro":
        return AvroImages(sender, avro_uri)
    if kind != "s3":
        raise ValueError(f"images {kind!r} is not available (s3, avro)")
    s3 = resolve_s3(settings)
    if s3 is None:
        raise ValueError("images=s3 needs an S3 server (PROMPT_S3_* or the embedded stack's)")
    return S3Images(sender, s3, raws_from)


async def storage_figures(images: ImagePublisher, metrics_url: str) -> dict[str, Any]:
    """PUT times and the dispatcher's header reads per notification, from its /metrics."""
    if not isinstance(images, S3Images):
        return {}
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(metrics_url) as resp:
        text = await resp.text()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith(("prompt_raw_header_bytes_total", "prompt_raw_header_reads_total"))
    }
    puts = sorted(images.put_ms)
    notified = len(puts)
    header_bytes = values.get("prompt_raw_header_bytes_total", 0.0)
    reads = int(values.get("prompt_raw_header_reads_total", 0))
    return {
        "puts": notified, "put_failures": len(images.failed),
        "put_mb": round(images.bytes_put / 1e6, 1),
        "put_ms_p50": round(percentile(puts, 50), 2) if puts else None,
        "put_ms_p99": round(percentile(puts, 99), 2) if puts else None,
        "header_reads": reads,
        "header_bytes": int(header_bytes),
        "header_bytes_per_notification": round(header_bytes / notified, 1) if notified else None,
        "header_bytes_per_read": round(header_bytes / reads, 1) if reads else None,
    }  # fmt: skip
