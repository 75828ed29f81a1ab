"""Completion events: written to the outbox in the transaction that ends the job, published
after commit, deleted once the broker has them.

After a crash the outbox may hold events that were in fact published. Recovery reads the
completion topic from the last checkpoint and skips job ids already there, so every job's
completion appears on the topic exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from prompt.dispatcher.writer import OFFSET_UPSERT

log = structlog.get_logger(__name__)


def completion_key(job_id: int) -> bytes:
    return str(job_id).encode()


class CompletionPublisher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        topic: str,
        checkpoint_name: str,
        *,
        on_published: Callable[[int], None] | None = None,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._topic = topic
        self._checkpoint = checkpoint_name
        self._pending: dict[int, bytes] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._on_published = on_published
        self.published = 0

    def committed(self, outbox: dict[int, bytes]) -> None:
        self._pending.update(outbox)
        self._idle.clear()
        self._wake.set()

    async def recover(self, consumer_options: dict[str, Any]) -> int:
        """Load unpublished completions; drop those the topic already holds. Returns #pending."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch("SELECT job_id, value FROM completion_outbox")
            checkpoints = {
                r["partition"]: r["next_offset"]
                for r in await conn.fetch(
                    "SELECT partition, next_offset FROM consumer_offsets"
                    " WHERE consumer = $1 AND topic = $2",
                    self._checkpoint,
                    self._topic,
                )
            }
        if not rows:
            return 0
        outbox = {r["job_id"]: bytes(r["value"]) for r in rows}
        already = await self._published_since(consumer_options, checkpoints)
        dup = [job for job in outbox if job in already]
        if dup:
            async with self._pool.acquire() as conn:
                await conn.execute(
                    "DELETE FROM completion_outbox WHERE job_id = ANY($1::bigint[])", dup
                )
        for job in dup:
            del outbox[job]
        log.info("completion outbox recovered", pending=len(outbox), already_published=len(dup))
        if outbox:
            self.committed(outbox)
        return len(outbox)

    async def _published_since(
        self, options: dict[str, Any], checkpoints: dict[int, int]
    ) -> set[int]:
        consumer = AIOKafkaConsumer(**options, enable_auto_commit=False)
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(self._topic) or set()
            tps = [TopicPartition(self._topic, p) for p in parts]
            if not tps:
                return set()
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            seen: set[int] = set()
            for tp in tps:
                consumer.seek(tp, checkpoints.get(tp.partition, 0))
            remaining = {tp for tp in tps if ends[tp] > checkpoints.get(tp.partition, 0)}
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=1000)
                if not batch:
                    break
                for tp, msgs in batch.items():
                    for msg in msgs:
                        if msg.key:
                            seen.add(int(msg.key))
                    if msgs and msgs[-1].offset + 1 >= ends[tp]:
                        remaining.discard(tp)
            return seen
        finally:
            await consumer.stop()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                self._idle.set()
                continue
            batch = dict(self._pending)
            try:
                await self._publish(batch)
            except Exception as exc:
                log.error("publishing completions failed; retrying", error=repr(exc))
                await asyncio.sleep(0.5)
                self._wake.set()
                continue
            for job in batch:
                self._pending.pop(job, None)
            if not self._pending:
                self._idle.set()
            else:
                self._wake.set()

    async def _publish(self, batch: dict[int, bytes]) -> None:
        futures = [
            await self._producer.send(self._topic, value, key=completion_key(job))
            for job, value in batch.items()
        ]
        metas = await asyncio.gather(*futures)
        ends: dict[int, int] = {}
        for meta in metas:
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM completion_outbox WHERE job_id = ANY($1::bigint[])", list(batch)
            )
            await conn.executemany(
                OFFSET_UPSERT,
                [(self._checkpoint, self._topic, part, off) for part, off in ends.items()],
            )
        self.published += len(batch)
        if self._on_published is not None:
            self._on_published(len(batch))

    async def flush(self, timeout_s: float = 10.0) -> None:
        await asyncio.wait_for(self._idle.wait(), timeout_s)
