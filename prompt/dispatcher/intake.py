"""Kafka intake: partitions assigned to this dispatcher directly (no consumer-group rebalance),
positioned at the offsets stored in PostgreSQL with the state they produced.

Two consumers, so a resurrection transaction never delays an image push: control (next-visit,
next-visit-canceled) is handled one event at a time; images are handled in memory.
Undecodable or unusable events go to the dead-letter topic with the reason, and are counted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from prompt.dispatcher.core import Dispatcher
from prompt.dispatcher.writer import StateWriter
from prompt.events import (
    AvroCodec,
    EventError,
    ImageArrival,
    InvalidEventError,
    NotificationError,
    RawObject,
    decode_consumed,
    decode_image_message,
)
from prompt.events.raw_metadata import RawMetadataResolver
from prompt.metrics import DispatcherMetrics

log = structlog.get_logger(__name__)

Handler = Callable[[dict[str, Any], str, int, int, float], Awaitable[None]]


class DeadLetters:
    def __init__(self, producer: AIOKafkaProducer, topic: str, metrics: DispatcherMetrics) -> None:
        self._producer = producer
        self._topic = topic
        self._metrics = metrics
        self.count = 0

    async def send(self, msg: ConsumerRecord[Any, Any], kind: str, error: EventError) -> None:
        headers = [
            ("prompt.reason", error.reason.encode()),
            ("prompt.error", str(error).encode()[:4096]),
            ("prompt.kind", kind.encode()),
            ("prompt.source.topic", msg.topic.encode()),
            ("prompt.source.partition", str(msg.partition).encode()),
            ("prompt.source.offset", str(msg.offset).encode()),
        ]
        await self._producer.send(self._topic, msg.value or b"", key=msg.key, headers=headers)
        self.count += 1
        self._metrics.dead_lettered.labels(kind, error.reason).inc()
        log.warning("event dead-lettered", kind=kind, reason=error.reason, error=str(error))


class Intake:
    def __init__(
        self,
        *,
        consumer_options: dict[str, Any],
        control_options: dict[str, Any],
        name: str,
        topics: dict[str, str],
        dispatcher: Dispatcher,
        writer: StateWriter,
        codecs: dict[str, AvroCodec],
        dead_letters: DeadLetters,
        metrics: DispatcherMetrics,
        resolver: RawMetadataResolver | None,
        start_from: str,
    ) -> None:
        self._opts = consumer_options
        self._control_opts = control_options
        self._name = name
        self._topics = topics  # kind -> topic
        self._kind_of = {t: k for k, t in topics.items()}
        self._d = dispatcher
        self._writer = writer
        self._codecs = codecs
        self._dlq = dead_letters
        self._metrics = metrics
        self._resolver = resolver
        self._start_from = start_from
        self._stopping = asyncio.Event()
        self.positions: dict[tuple[str, int], int] = {}
        """Next offset to process per partition (what the lag gauge is measured against)."""
        self.control: AIOKafkaConsumer | None = None
        self.images: AIOKafkaConsumer | None = None
        self._handlers: dict[str, Handler] = {
            "next-visit": dispatcher.on_next_visit,
            "next-visit-canceled": dispatcher.on_canceled,
        }

    async def start(self, pool: asyncpg.Pool) -> dict[str, int]:
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT topic, partition, next_offset FROM consumer_offsets WHERE consumer = $1",
                self._name,
            )
        stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        self.control = await self._consumer(
            [self._topics["next-visit"], self._topics["next-visit-canceled"]],
            stored,
            self._control_opts,
        )
        self.images = await self._consumer([self._topics["image-arrival"]], stored, self._opts)
        return {f"{t}[{p}]": o for (t, p), o in stored.items()}

    async def _consumer(
        self, topics: list[str], stored: dict[tuple[str, int], int], opts: dict[str, Any]
    ) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            **opts,
            group_id=None,
            enable_auto_commit=False,
            max_poll_records=2000,
        )
        await consumer.start()
        tps: list[TopicPartition] = []
        for topic in topics:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                await consumer.stop()
                raise RuntimeError(f"topic {topic} does not exist (create it: prompt stack up)")
            tps.extend(TopicPartition(topic, p) for p in sorted(parts))
        consumer.assign(tps)
        fresh = [tp for tp in tps if (tp.topic, tp.partition) not in stored]
        if fresh:
            ends = await (
                consumer.beginning_offsets(fresh)
                if self._start_from == "earliest"
                else consumer.end_offsets(fresh)
            )
            for tp, off in ends.items():
                stored[(tp.topic, tp.partition)] = off
                self._writer.offset(tp.topic, tp.partition, off)
        for tp in tps:
            consumer.seek(tp, stored[(tp.topic, tp.partition)])
            self.positions[(tp.topic, tp.partition)] = stored[(tp.topic, tp.partition)]
        return consumer

    def lag(self) -> dict[tuple[str, int], int]:
        """Per partition: high watermark (as of the last fetch) minus our position. No I/O."""
        out: dict[tuple[str, int], int] = {}
        for consumer in (self.control, self.images):
            if consumer is None:
                continue
            for tp in consumer.assignment():
                high = consumer.highwater(tp)
                position = self.positions.get((tp.topic, tp.partition))
                if high is not None and position is not None:
                    out[(tp.topic, tp.partition)] = max(0, high - position)
        return out

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        for consumer in (self.control, self.images):
            if consumer is not None:
                await consumer.stop()

    async def run_control(self) -> None:
        assert self.control is not None
        while not self._stopping.is_set():
            batch = await self.control.getmany(timeout_ms=100)
            for msgs in batch.values():
                for msg in msgs:
                    await self._control_message(msg)
                    self.positions[(msg.topic, msg.partition)] = msg.offset + 1
                    if self._stopping.is_set():
                        break  # the rest is re-read from the stored offset next time

    async def _control_message(self, msg: ConsumerRecord[Any, Any]) -> None:
        consumed = time.time()
        kind = self._kind_of[msg.topic]
        self._metrics.consumed_by[kind].inc()
        backoff = 0.1
        while True:
            try:
                record = await decode_consumed(self._codecs[kind], msg)
                if kind == "next-visit" and record.get("instrument") and not record.get("groupId"):
                    raise InvalidEventError("next-visit for an observation has no groupId")
                await self._handlers[kind](record, msg.topic, msg.partition, msg.offset, consumed)
                return
            except EventError as exc:
                if exc.retriable and not self._stopping.is_set():
                    log.warning("retrying event", error=str(exc), retry_in=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                await self._dlq.send(msg, kind, exc)
                self._writer.offset(msg.topic, msg.partition, msg.offset + 1)
                return
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
                if self._stopping.is_set():
                    raise
                log.error("database error handling event; retrying", error=repr(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def run_images(self) -> None:
        assert self.images is not None
        while not self._stopping.is_set():
            batch = await self.images.getmany(timeout_ms=100)
            for msgs in batch.values():
                for msg in msgs:
                    await self._image_message(msg)
                if msgs:
                    last = msgs[-1]
                    self._writer.offset(last.topic, last.partition, last.offset + 1)
                    self.positions[(last.topic, last.partition)] = last.offset + 1

    async def _image_message(self, msg: ConsumerRecord[Any, Any]) -> None:
        consumed = time.time()
        self._metrics.consumed_by["image-arrival"].inc()
        try:
            items = await decode_image_message(self._codecs["image-arrival"], msg.value)
            for item in items:
                arrival = item if isinstance(item, ImageArrival) else await self._resolve(item)
                if not 0 <= arrival.snap < 31 or arrival.detector < 0 or not arrival.group_id:
                    raise InvalidEventError(
                        f"image-arrival with snap {arrival.snap}, detector {arrival.detector},"
                        f" groupId {arrival.group_id!r}"
                    )
                await self._d.handle_image(arrival, consumed)
        except EventError as exc:
            exc.at(topic=msg.topic, partition=msg.partition, offset=msg.offset)
            await self._dlq.send(msg, "image-arrival", exc)

    async def _resolve(self, raw: RawObject) -> ImageArrival:
        if self._resolver is None:
            raise NotificationError(
                f"{raw.uri}: bucket notification, but no raw root (PROMPT_RAW_ROOT) to read "
                "its group and snap from"
            )
        return self._resolver.cached(raw) or await self._resolver.resolve(raw)
