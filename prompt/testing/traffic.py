"""The observatory's side of the wire: next-visit and image events sent, completions collected."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from prompt.aio import cancel_and_wait
from prompt.config import Settings
from prompt.events import (
    AvroCodec,
    EventKind,
    ImageArrival,
    LocalSchemaRegistry,
    NextVisit,
    make_registry,
)
from prompt.kafka import aiokafka_options, consumer_options
from prompt.stack import resolve_endpoints
from prompt.timescale import TAI_MINUS_UTC_S

log = structlog.get_logger(__name__)

SEND_RETRY_S = 30.0
"""A send the broker refused (it was down, or restarting) is tried again for this long."""
RESEND_ATTEMPTS = 3
"""An image whose delivery failed (after the producer's own retries) is sent this often."""


def next_visit_for(
    group_id: str,
    *,
    start_utc: float,
    filters: str = "r_57",
    survey: str = "BLOCK-365",
    ra: float = 150.0,
    dec: float = -30.0,
    duration: float = 30.0,
    nimages: int = 1,
    instrument: str = "LSSTCam",
    script_sal_index: int = 1,
) -> NextVisit:
    return NextVisit(
        instrument=instrument,
        group_id=group_id,
        survey=survey,
        filters=filters,
        position=(ra, dec),
        coordinate_system=2,
        camera_angle=0.0,
        rotation_system=2,
        start_time=start_utc + TAI_MINUS_UTC_S,
        duration=duration,
        nimages=nimages,
        dome=2,
        sal_index=1,
        script_sal_index=script_sal_index,
        efd_stamp=time.time(),
    )


class EventSender:
    """Publishes next-visit, cancel and image-arrival events as the observatory would.

    It rides out a broker outage of a few seconds: an acknowledged send that fails is tried
    again (for ``SEND_RETRY_S``), an image whose delivery failed is kept for
    :meth:`resend_failed` (the camera's side would resend it too)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.failed_images: list[tuple[bytes, bytes, int]] = []
        """(arrival, attempts so far)"""
        self.resent = 0
        registry = LocalSchemaRegistry()
        self.nv_codec = AvroCodec(EventKind.NEXT_VISIT, registry)
        self.cancel_codec = AvroCodec(EventKind.NEXT_VISIT_CANCELED, registry)
        self.image_codec = AvroCodec(EventKind.IMAGE_ARRIVAL, registry)
        opts = aiokafka_options(settings, resolve_endpoints(settings).kafka_bootstrap)
        # A burst of image events leaves as one produce request (one batch, one fetch).
        self.producer = AIOKafkaProducer(
            **opts, linger_ms=5, max_batch_size=1024 * 1024, enable_idempotence=False
        )
        self._partitioner = DefaultPartitioner()
        """Where the producer would put a key (``images`` builds its batches itself)."""

    async def __aenter__(self) -> EventSender:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def _send_and_wait(self, topic: str, value: bytes, key: bytes | None) -> None:
        deadline = time.monotonic() + SEND_RETRY_S
        while True:
            try:
                await self.producer.send_and_wait(topic, value, key=key)
                return
            except KafkaError as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("send failed, trying again", topic=topic, error=repr(exc))
                self.resent += 1
                await asyncio.sleep(0.2)

    async def next_visit(self, nv: NextVisit) -> None:
        await self._send_and_wait(
            self.settings.topics.next_visit,
            self.nv_codec.encode(nv.to_record()),
            nv.group_id.encode(),
        )

    async def cancel(self, group_id: str, script_sal_index: int = 1) -> None:
        record = {"groupId": group_id, "scriptSalIndex": script_sal_index}
        await self._send_and_wait(
            self.settings.topics.next_visit_canceled,
            self.cancel_codec.encode(record),
            group_id.encode(),
        )

    async def raw(self, topic: str, value: bytes) -> None:
        await self.producer.send_and_wait(topic, value)

    async def image(self, arrival: ImageArrival) -> None:
        """Enqueue one image-arrival (delivery is not awaited: a camera does not wait).

        Keyed by visit (group id): a visit's images stay in order on one partition, and a
        burst leaves as one batch to one partition rather than a sliver to each."""
        await self._enqueue_image(
            self.image_codec.encode(arrival.to_record()), arrival.group_id.encode()
        )

    async def notification(self, value: bytes, key: bytes) -> None:
        """Enqueue one bucket notification (JSON), keyed by exposure, not awaiting delivery."""
        await self._enqueue_image(value, key)

    async def _enqueue_image(self, value: bytes, key: bytes, attempt: int = 1) -> None:
        topic = self.settings.topics.image_arrival
        delivery = await self.producer.send(topic, value, key=key)

        def delivered(future: asyncio.Future[Any]) -> None:
            if not future.cancelled() and future.exception() is not None:
                log.warning("image delivery failed", error=repr(future.exception()))
                self.failed_images.append((value, key, attempt))

        delivery.add_done_callback(delivered)

    async def resend_failed(self) -> None:
        """Send again the image events whose delivery failed (cheap when there are none)."""
        while self.failed_images:
            value, key, attempts = self.failed_images.pop(0)
            if attempts >= RESEND_ATTEMPTS:
                raise RuntimeError(f"image event (key {key!r}) not delivered in {attempts} tries")
            self.resent += 1
            await self._enqueue_image(value, key, attempts + 1)

    async def images(self, arrivals: list[ImageArrival]) -> None:
        """One burst, as one produce request per partition: every record encoded, then
        batched. The same request as ``send`` per record makes, for ~30 % less of this
        process's CPU (3.9-5.0 ms per 189 images instead of 5.7-7.3), which the benchmarks
        otherwise take from the burst they measure."""
        topic = self.settings.topics.image_arrival
        partitions = sorted(await self.producer.partitions_for(topic))
        records = [(a.group_id.encode(), self.image_codec.encode(a.to_record())) for a in arrivals]
        batches: dict[int, Any] = {}
        futures = []
        for key, value in records:
            part = self._partitioner(key, partitions, partitions)
            batch = batches.get(part)
            if batch is None:
                batch = batches[part] = self.producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it
                futures.append(await self.producer.send_batch(batch, topic, partition=part))
                batch = batches[part] = self.producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        for part, batch in batches.items():
            futures.append(await self.producer.send_batch(batch, topic, partition=part))
        await asyncio.gather(*futures)


def image_arrivals(
    nv: NextVisit,
    detectors: range | list[int],
    *,
    snap: int = 0,
    event_time: float | None = None,
    uri_for: Callable[[int], str] | None = None,
) -> list[ImageArrival]:
    """One image-arrival per detector; ``uri_for(detector)`` names the raw (default: a
    made-up key, for payloads that do not read it)."""
    now = time.time() if event_time is None else event_time
    return [
        ImageArrival(
            instrument=nv.instrument,
            group_id=nv.group_id,
            snap=snap,
            detector=d,
            uri=uri_for(d)
            if uri_for
            else f"s3://rubin-summit/{nv.instrument}/{d:03d}/{nv.group_id}.fits",
            event_time=now,
        )
        for d in detectors
    ]


@dataclass
class CompletionCollector:
    """Reads the completion topic from the beginning; counts every record per job id."""

    settings: Settings
    poll_interval_s: float = 0.0
    """Pause between reads: fewer, larger fetches (on the embedded broker each fetch that
    returns data costs time proportional to the partition's size)."""
    records: list[dict[str, Any]] = field(default_factory=list)
    by_job: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _next: dict[int, int] = field(default_factory=dict)
    """partition -> the next offset not yet read"""

    async def __aenter__(self) -> CompletionCollector:
        opts = consumer_options(
            self.settings,
            resolve_endpoints(self.settings).kafka_bootstrap,
            latency_critical=False,
        )
        # After a broker restart a position may be out of range: read again from the start,
        # skipping the offsets already read (so nothing is missed nor counted twice).
        self._consumer = AIOKafkaConsumer(
            **opts, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await self._consumer.start()
        topic = self.settings.topics.completion
        tps = [TopicPartition(topic, p) for p in self._consumer.partitions_for_topic(topic) or []]
        self._consumer.assign(tps)
        for tp in tps:
            self._consumer.seek(tp, 0)
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._task.add_done_callback(lambda _: self._changed.set())  # wake waiters: it died
        return self

    async def _run(self) -> None:
        assert self._consumer is not None
        # The dispatcher's registry: with one configured, completions carry its ids.
        registry = make_registry(self.settings.schema_registry_url)
        codec = AvroCodec(EventKind.COMPLETION, registry)
        try:
            while True:
                batch = await self._consumer.getmany(timeout_ms=200)
                for tp, msgs in batch.items():
                    for msg in msgs:
                        if msg.offset < self._next.get(tp.partition, 0):
                            continue
                        self._next[tp.partition] = msg.offset + 1
                        record = await codec.decode(msg.value)
                        self.records.append(record)
                        self.by_job.setdefault(record["jobId"], []).append(record)
                        if len(self.records) % 200 == 0:
                            await asyncio.sleep(0)  # a burst must not stall the caller's loop
                if batch:
                    self._changed.set()
                if self.poll_interval_s:
                    await asyncio.sleep(self.poll_interval_s)
        finally:
            await registry.close()

    async def wait_for(self, count: int, timeout: float = 60.0) -> None:
        """Until ``count`` distinct jobs have completed."""
        async with asyncio.timeout(timeout):
            while len(self.by_job) < count:
                if self._task is not None and self._task.done():
                    self._task.result()  # the reading task failed: say why, do not wait on
                    raise RuntimeError("the completion collector stopped")
                self._changed.clear()
                await self._changed.wait()

    def for_group(self, group_id: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["groupId"] == group_id]

    def duplicates(self) -> int:
        return sum(len(v) - 1 for v in self.by_job.values())

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._task)
        if self._consumer is not None:
            await self._consumer.stop()
