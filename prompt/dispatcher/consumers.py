"""The intake's two Kafka consumers: partitions assigned directly (no consumer-group
rebalance), positioned at the offsets stored in PostgreSQL with the state they produced.

Broker trouble is ridden out here: a broker that is down or a topic not there yet is waited
for at start (for at most ``retry_for_s``), a failed fetch is logged and shows in readiness,
and a stored position past the end of a partition (the topic was recreated, or truncated) is
said loudly and, by policy, resumes from the partition's earliest offset — events are
idempotent, so re-reading is safe, and nothing written to the new log is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError
from aiokafka.structs import ConsumerRecord

from prompt.aio import reraise_if_cancelled
from prompt.bounds import bound_error
from prompt.dispatcher.health import Health
from prompt.dispatcher.writer import StateWriter
from prompt.kafka import broker_retriable, stop_consumer
from prompt.metrics import DispatcherMetrics

log = structlog.get_logger(__name__)

Batch = dict[TopicPartition, list[ConsumerRecord[Any, Any]]]


class DependencyError(RuntimeError):
    """A dependency stayed unreachable longer than an event may wait: the term ends."""


class Consumers:
    def __init__(
        self,
        *,
        consumer_options: dict[str, Any],
        control_options: dict[str, Any],
        name: str,
        topics: dict[str, str],
        writer: StateWriter,
        metrics: DispatcherMetrics,
        health: Health,
        start_from: str,
        retry_for_s: float,
    ) -> None:
        self._opts = consumer_options
        self._control_opts = control_options
        self._name = name
        self.topics = topics  # kind -> topic
        self._writer = writer
        self._metrics = metrics
        self._health = health
        self._start_from = start_from
        self._retry_for_s = retry_for_s
        self.positions: dict[tuple[str, int], int] = {}
        """Next offset to process per partition (what the lag gauge is measured against)."""
        self.control: AIOKafkaConsumer | None = None
        self.images: AIOKafkaConsumer | None = None
        self._stop_waiting = asyncio.Event()

    async def start(self, pool: asyncpg.Pool, stop: asyncio.Event) -> dict[str, int]:
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT topic, partition, next_offset FROM consumer_offsets WHERE consumer = $1",
                self._name,
            )
        stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        self._stop_waiting = stop
        control = [self.topics["next-visit"], self.topics["next-visit-canceled"]]
        self.control = await self._consumer(control, stored, self._control_opts, stop)
        self.images = await self._consumer([self.topics["image-arrival"]], stored, self._opts, stop)
        self._health.probe("broker", self._since_fetch)
        return {f"{t}[{p}]": o for (t, p), o in stored.items()}

    async def _consumer(
        self,
        topics: list[str],
        stored: dict[tuple[str, int], int],
        opts: dict[str, Any],
        stop: asyncio.Event,
    ) -> AIOKafkaConsumer:
        """A consumer assigned every partition of ``topics``, once the broker has them all.

        A broker that is down or a topic that does not exist yet is waited for (with a clear
        log line) for at most ``retry_for_s``."""
        deadline = time.monotonic() + self._retry_for_s
        backoff = 0.2
        while True:
            consumer = AIOKafkaConsumer(
                **opts, group_id=None, enable_auto_commit=False, max_poll_records=2000,
                auto_offset_reset="none",
            )  # fmt: skip
            missing: list[str] = []
            try:
                await consumer.start()
                tps: list[TopicPartition] = []
                for topic in topics:
                    parts = consumer.partitions_for_topic(topic)
                    if not parts:
                        missing.append(topic)
                    tps.extend(TopicPartition(topic, p) for p in sorted(parts or ()))
                if not missing:
                    await self._position(consumer, tps, stored)
                    return consumer
                problem = f"topics {missing} do not exist (create them: prompt stack up)"
            except KafkaError as exc:
                reraise_if_cancelled()
                if not broker_retriable(exc):
                    await stop_consumer(consumer)
                    raise
                problem = f"broker unreachable: {exc!r}"
            await stop_consumer(consumer)
            if time.monotonic() > deadline or stop.is_set():
                raise DependencyError(f"intake cannot start: {problem}")
            log.warning("intake waiting", problem=problem, retry_in=backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, 5.0)

    async def _position(
        self,
        consumer: AIOKafkaConsumer,
        tps: list[TopicPartition],
        stored: dict[tuple[str, int], int],
    ) -> None:
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

    def images_read(self) -> bool:
        """Whether the image intake has read all the broker held at its last fetch (never
        before its first fetch answered)."""
        if self.images is None:
            return False
        for tp in self.images.assignment():
            high = self.images.highwater(tp)
            if high is None or self.positions.get((tp.topic, tp.partition), 0) < high:
                return False
        return True

    def _since_fetch(self) -> float | None:
        """Seconds since the broker last answered a fetch of every assigned partition."""
        oldest: float | None = None
        for consumer in (self.control, self.images):
            if consumer is None:
                continue
            for tp in consumer.assignment():
                stamp = consumer.last_poll_timestamp(tp)
                if stamp is not None:
                    oldest = stamp if oldest is None else min(oldest, stamp)
        return None if oldest is None else max(0.0, time.time() - oldest / 1000)

    async def close(self) -> None:
        for consumer in (self.control, self.images):
            if consumer is not None:
                await stop_consumer(consumer)

    # ---- the loops --------------------------------------------------------------------------

    async def fetch(self, which: str) -> Batch:
        """One fetch by the ``control`` or the ``images`` consumer; broker trouble is logged
        and shows in readiness, never raised."""
        consumer = self.control if which == "control" else self.images
        assert consumer is not None
        component = f"intake-{which}"
        try:
            batch: Batch
            batch = await consumer.getmany(timeout_ms=100)
        except OffsetOutOfRangeError as exc:
            parts = [t for t in (exc.args[0] if exc.args else {}) if isinstance(t, TopicPartition)]
            await self._offsets_went_back(consumer, parts or list(consumer.assignment()))
            return {}
        except KafkaError as exc:
            reraise_if_cancelled()
            self._health.error(component, bound_error(repr(exc)))
            log.warning("fetch failed; retrying", component=component, error=repr(exc))
            await asyncio.sleep(0.5)
            return {}
        self._health.beat(component)
        if not batch:  # some brokers answer a fetch past the end with no error, only the end
            behind = [
                tp for tp in consumer.assignment()
                if (high := consumer.highwater(tp)) is not None
                and high < self.positions.get((tp.topic, tp.partition), 0)
            ]  # fmt: skip
            if behind:
                await self._offsets_went_back(consumer, behind)
        return batch

    async def _offsets_went_back(
        self, consumer: AIOKafkaConsumer, parts: list[TopicPartition]
    ) -> None:
        starts = await consumer.beginning_offsets(parts)
        ends = await consumer.end_offsets(parts)
        reset = False
        for tp in parts:
            ours = self.positions.get((tp.topic, tp.partition))
            if ours is not None and starts[tp] <= ours <= ends[tp]:
                continue  # not this one
            log.error(
                "stored position is outside the partition: the topic was recreated or truncated;"
                " resuming from its earliest offset (events are idempotent, nothing new skipped)",
                topic=tp.topic, partition=tp.partition, position=ours, log_start=starts[tp],
                log_end=ends[tp],
            )  # fmt: skip
            self._metrics.offset_resets.labels(tp.topic).inc()
            self.positions[(tp.topic, tp.partition)] = starts[tp]
            self._writer.offset_reset(tp.topic, tp.partition, starts[tp])
            reset = True
        if reset:
            # A fresh consumer at the new positions: seeking one whose fetches are in flight
            # against a log that was replaced was seen to leave it fetching nothing.
            await self._reopen(consumer)

    async def _reopen(self, consumer: AIOKafkaConsumer) -> None:
        is_control = consumer is self.control
        topics = sorted({tp.topic for tp in consumer.assignment()})
        await stop_consumer(consumer)
        fresh = await self._consumer(
            topics, dict(self.positions), self._control_opts if is_control else self._opts,
            self._stop_waiting,
        )  # fmt: skip
        if is_control:
            self.control = fresh
        else:
            self.images = fresh
