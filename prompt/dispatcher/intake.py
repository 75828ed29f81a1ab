"""Kafka intake: every event read (``consumers.py``), decoded, checked, and handed to the
runtime, with the offsets stored with the state they produced.

Two consumers, so a resurrection transaction never delays an image push: control (next-visit,
next-visit-canceled) is handled one event at a time; images are handled in memory.

What can go wrong with one event is sorted by what retrying can do:
- it does not decode, or decodes to values no real event has (``prompt.events.limits``), or
  the database refuses it: dead letter with the reason, offset moves on;
- the database is unreachable: retried with backoff, the offset stays, for at most
  ``retry_for_s`` (then the term ends and the leader steps down; the event is read again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import asyncpg
import structlog
from aiokafka.structs import ConsumerRecord

from prompt.aio import reraise_if_cancelled
from prompt.bounds import bound_error
from prompt.dispatcher.consumers import Batch, Consumers, DependencyError
from prompt.dispatcher.deadletters import DeadLetters
from prompt.dispatcher.health import Health
from prompt.dispatcher.runtime import Runtime
from prompt.dispatcher.writer import StateWriter
from prompt.events import (
    AvroCodec,
    EventError,
    ImageArrival,
    ImageReader,
    NotificationError,
    RawObject,
    decode_consumed,
    decode_image_message,
    limits,
)
from prompt.events.raw_metadata import RawMetadataResolver
from prompt.events.wire import MAGIC
from prompt.metrics import DispatcherMetrics
from prompt.store.errors import DB_ERRORS, is_transient

log = structlog.get_logger(__name__)


FIRST_HAND_OFF: Final = 16
"""Within a fetch batch, the job frames already decided leave for the pilots after this many
images, then each time the count doubles (16, 32, 64, 128 ...), and at the end. A batch is
handled in one event-loop step (a burst of 189 images takes milliseconds), and corked
frames otherwise leave only when it ends: the pilots would idle meanwhile. Few hand-offs,
not one per time slice: each wakes every pilot, which on a busy host preempts the intake."""


BURST_TAIL_S: Final = 0.02
"""A burst of images keeps the cores busy this long after its last fetch batch is handed out
(the pilots' hand-offs, the workers waking): the state writer waits for it to pass."""


class RejectedError(EventError):
    """The database refused what the event would have written (its values, not the link)."""

    reason = "rejected"


class Intake:
    """Decodes, validates and hands each consumed event to the runtime; dead-letters what it
    cannot use. The consumers (positions, reconnects) are built by the term and passed in."""

    def __init__(
        self,
        *,
        consumers: Consumers,
        runtime: Runtime,
        writer: StateWriter,
        codecs: dict[str, AvroCodec],
        dead_letters: DeadLetters,
        metrics: DispatcherMetrics,
        health: Health,
        resolver: RawMetadataResolver | None,
        retry_for_s: float = 60.0,
    ) -> None:
        self._kind_of = {t: k for k, t in consumers.topics.items()}
        self._rt = runtime
        self._writer = writer
        self._codecs = codecs
        self._image_codec = codecs["image-arrival"]
        self._images = ImageReader(self._image_codec)
        self._dlq = dead_letters
        self._metrics = metrics
        self._health = health
        self._resolver = resolver
        self._retry_for_s = retry_for_s
        self._stopping = asyncio.Event()
        self._images_at = float("-inf")
        self.consumers = consumers

    # ---- start and stop ---------------------------------------------------------------------

    async def start(self, pool: asyncpg.Pool, stop: asyncio.Event) -> dict[str, int]:
        return await self.consumers.start(pool, stop)

    def lag(self) -> dict[tuple[str, int], int]:
        return self.consumers.lag()

    def images_read(self) -> bool:
        return self.consumers.images_read()

    @property
    def positions(self) -> dict[tuple[str, int], int]:
        return self.consumers.positions

    def burst_left_s(self) -> float:
        """How much longer the burst of images in progress may keep the cores busy (0: none
        is in progress)."""
        return max(0.0, self._images_at + BURST_TAIL_S - time.monotonic())

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        await self.consumers.close()

    # ---- the loops --------------------------------------------------------------------------

    async def run_control(self) -> None:
        while not self._stopping.is_set():
            batch = await self.consumers.fetch("control")
            for msgs in batch.values():
                for msg in msgs:
                    await self._control_message(msg)
                    self.positions[(msg.topic, msg.partition)] = msg.offset + 1
                    self._health.beat("intake-control")
                    if self._stopping.is_set():
                        return  # the rest is re-read from the stored offset next time

    async def _control_message(self, msg: ConsumerRecord[Any, Any]) -> None:
        consumed = time.time()
        kind = self._kind_of[msg.topic]
        self._metrics.consumed_by[kind].inc()

        async def handle() -> None:
            record = await decode_consumed(self._codecs[kind], msg)
            at = (msg.topic, msg.partition, msg.offset)
            if kind == "next-visit":
                await self._rt.next_visit(limits.next_visit(record), record, consumed, at)
            else:
                await self._rt.cancel(limits.cancel_group(record), consumed, at)

        await self._guarded(msg, kind, "intake-control", handle)

    async def run_images(self) -> None:
        while not self._stopping.is_set():
            await self.take_images(await self.consumers.fetch("images"))

    async def take_images(self, batch: Batch) -> None:
        """One fetch batch of the image topic (``prompt bench intake`` times this)."""
        counted = self._metrics.consumed_by["image-arrival"]
        handled, hand_off_at = 0, FIRST_HAND_OFF
        for msgs in batch.values():
            counted.inc(len(msgs))
            for msg in msgs:
                consumed = time.time()
                if not self._image_now(msg, consumed):
                    await self._image_message(msg, consumed)
                handled += 1
                if handled == hand_off_at:
                    self._rt.hand_off()
                    hand_off_at *= 2
            if msgs:
                self._images_at = time.monotonic()
                last = msgs[-1]
                self._writer.offset(last.topic, last.partition, last.offset + 1)
                self.positions[(last.topic, last.partition)] = last.offset + 1

    def _image_now(self, msg: ConsumerRecord[Any, Any], consumed: float) -> bool:
        """The usual image at memory speed: Avro whose writer schema is known, within limits,
        its visit in memory; no coroutine, no closure. False, with nothing done, for anything
        else (a bucket notification, a schema to fetch, a visit to build, an event in error):
        ``_image_message`` then takes it, and dead-letters or retries it with the reason."""
        value = msg.value
        if not value or value[0] != MAGIC:
            return False
        try:
            arrival = self._images.read(value)
            if arrival is None:  # another writer schema, or a body to look at closely
                record = self._image_codec.decode_cached(value)
                if record is None:
                    return False
                arrival = ImageArrival.from_record(record)
            return self._rt.image_now(limits.image_arrival(arrival), consumed)
        except EventError:
            return False

    async def _image_message(self, msg: ConsumerRecord[Any, Any], consumed: float) -> None:
        async def handle() -> None:
            items = await decode_image_message(self._codecs["image-arrival"], msg.value)
            for item in items:
                arrival = item if isinstance(item, ImageArrival) else await self._resolve(item)
                await self._rt.image(limits.image_arrival(arrival), consumed)

        await self._guarded(msg, "image-arrival", "intake-images", handle)

    async def _guarded(
        self,
        msg: ConsumerRecord[Any, Any],
        kind: str,
        component: str,
        handle: Callable[[], Awaitable[None]],
    ) -> None:
        """Run ``handle`` for one event: dead-letter what can never succeed, retry what may."""
        deadline = time.monotonic() + self._retry_for_s
        backoff = 0.1
        while True:
            try:
                await handle()
                return
            except EventError as exc:
                reraise_if_cancelled()
                if exc.retriable and time.monotonic() < deadline and not self._stopping.is_set():
                    problem: BaseException = exc
                else:
                    exc.at(topic=msg.topic, partition=msg.partition, offset=msg.offset)
                    await self._dead_letter(msg, kind, exc)
                    return
            except DB_ERRORS as exc:
                reraise_if_cancelled()
                if not is_transient(exc):
                    refused = RejectedError(
                        f"the database refused what this event would write: {bound_error(exc)}",
                        kind=kind,
                    ).at(topic=msg.topic, partition=msg.partition, offset=msg.offset)
                    await self._dead_letter(msg, kind, refused)
                    return
                if time.monotonic() > deadline or self._stopping.is_set():
                    raise DependencyError(
                        f"database unreachable for {self._retry_for_s:.0f} s handling {kind}"
                        f" at {msg.topic}[{msg.partition}]@{msg.offset}: {exc!r}"
                    ) from exc
                problem = exc
            self._health.error(component, bound_error(repr(problem)))
            log.warning("retrying event", kind=kind, error=bound_error(repr(problem)),
                        retry_in=backoff)  # fmt: skip
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _dead_letter(self, msg: ConsumerRecord[Any, Any], kind: str, exc: EventError) -> None:
        await self._dlq.send(msg, kind, exc)
        if kind != "image-arrival":  # the image loop stores its offsets per batch
            self._writer.offset(msg.topic, msg.partition, msg.offset + 1)

    async def _resolve(self, raw: RawObject) -> ImageArrival:
        if self._resolver is None:
            raise NotificationError(
                f"{raw.uri}: bucket notification, but no raw store (PROMPT_RAWS_IN_S3 or "
                "PROMPT_RAW_ROOT) to read its group and snap from"
            )
        return self._resolver.cached(raw) or await self._resolver.resolve(raw)
