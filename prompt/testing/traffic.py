"""The observatory's side of the wire: next-visit and image events sent, completions collected."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

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
    """Publishes next-visit, cancel and image-arrival events as the observatory would."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        registry = LocalSchemaRegistry()
        self.nv_codec = AvroCodec(EventKind.NEXT_VISIT, registry)
        self.cancel_codec = AvroCodec(EventKind.NEXT_VISIT_CANCELED, registry)
        self.image_codec = AvroCodec(EventKind.IMAGE_ARRIVAL, registry)
        opts = aiokafka_options(settings, resolve_endpoints(settings).kafka_bootstrap)
        # A burst of image events leaves as one produce request (one batch, one fetch).
        self.producer = AIOKafkaProducer(
            **opts, linger_ms=5, max_batch_size=1024 * 1024, enable_idempotence=False
        )

    async def __aenter__(self) -> EventSender:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def next_visit(self, nv: NextVisit) -> None:
        await self.producer.send_and_wait(
            self.settings.topics.next_visit,
            self.nv_codec.encode(nv.to_record()),
            key=nv.group_id.encode(),
        )

    async def cancel(self, group_id: str, script_sal_index: int = 1) -> None:
        record = {"groupId": group_id, "scriptSalIndex": script_sal_index}
        await self.producer.send_and_wait(
            self.settings.topics.next_visit_canceled,
            self.cancel_codec.encode(record),
            key=group_id.encode(),
        )

    async def raw(self, topic: str, value: bytes) -> None:
        await self.producer.send_and_wait(topic, value)

    async def image(self, arrival: ImageArrival) -> None:
        """Enqueue one image-arrival (delivery is not awaited: a camera does not wait).

        Keyed by visit (group id): a visit's images stay in order on one partition, and a
        burst leaves as one batch to one partition rather than a sliver to each."""
        await self.producer.send(
            self.settings.topics.image_arrival,
            self.image_codec.encode(arrival.to_record()),
            key=arrival.group_id.encode(),
        )

    async def notification(self, value: bytes, key: bytes) -> None:
        """Enqueue one bucket notification (JSON), keyed by exposure, not awaiting delivery."""
        await self.producer.send(self.settings.topics.image_arrival, value, key=key)

    async def images(self, arrivals: list[ImageArrival]) -> None:
        """One burst: all enqueued at once, then flushed."""
        topic = self.settings.topics.image_arrival
        futures = [
            await self.producer.send(
                topic, self.image_codec.encode(a.to_record()), key=a.group_id.encode()
            )
            for a in arrivals
        ]
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

    async def __aenter__(self) -> CompletionCollector:
        opts = consumer_options(
            self.settings,
            resolve_endpoints(self.settings).kafka_bootstrap,
            latency_critical=False,
        )
        self._consumer = AIOKafkaConsumer(**opts, enable_auto_commit=False)
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
                for msgs in batch.values():
                    for msg in msgs:
                        record = await codec.decode(msg.value)
                        self.records.append(record)
                        self.by_job.setdefault(record["jobId"], []).append(record)
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
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
