"""Completion events: written to the outbox in the transaction that ends the job, published
after commit, deleted once the broker has them.

Exactly once on the topic, whatever fails:
- a completion the broker acknowledged is never sent again: if deleting its outbox row fails
  (the database restarts), only the delete is retried;
- a send that failed ambiguously (a timeout, the connection dropping: the broker may or may
  not have it) is not blindly repeated: the topic is read from the checkpoint first, as
  recovery does, and what is already there counts as published;
- after a crash, recovery reads the completion topic from the last checkpoint and skips job
  ids already there.
The checkpoint (the topic offset up to which every completion's outbox row is gone) moves in
the same transaction as the deletes, so it never passes a completion whose row is still there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError

from prompt.aio import reraise_if_cancelled
from prompt.dispatcher.batch import OFFSET_UPSERT
from prompt.dispatcher.leadership import Fence
from prompt.kafka import broker_retriable
from prompt.store.errors import DB_ERRORS, is_transient

log = structlog.get_logger(__name__)


def completion_key(job_id: int) -> bytes:
    return str(job_id).encode()


class CompletionPublisher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        fence: Fence,
        producer: AIOKafkaProducer,
        topic: str,
        checkpoint_name: str,
        consumer_options: dict[str, Any],
        *,
        on_published: Callable[[int], None] | None = None,
    ) -> None:
        self._pool = pool
        self._fence = fence
        self._producer = producer
        self._topic = topic
        self._checkpoint = checkpoint_name
        self._consumer_options = consumer_options
        self._pending: dict[int, bytes] = {}
        """Committed completions not known to be on the topic."""
        self._acked: set[int] = set()
        """On the topic; their outbox rows still to delete."""
        self._ends: dict[int, int] = {}
        """Per partition, the topic offset after the newest acknowledged completion."""
        self._checkpoints: dict[int, int] = {}
        """Per partition, the stored checkpoint: where an ambiguity check starts reading."""
        self._ambiguous = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._on_published = on_published
        self.published = 0
        self.oldest: float | None = None
        """Monotonic time since when completions have been waiting (None: none waits)."""
        self.last_error: str | None = None

    def committed(self, outbox: dict[int, bytes]) -> None:
        self._pending.update(outbox)
        if self.oldest is None:
            self.oldest = time.monotonic()
        self._idle.clear()
        self._wake.set()

    def waiting_s(self) -> float | None:
        return None if self.oldest is None else time.monotonic() - self.oldest

    # ---- start-up ---------------------------------------------------------------------------

    async def recover(self) -> int:
        """Load unpublished completions; drop those the topic already holds. Returns #pending."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch("SELECT job_id, value FROM completion_outbox")
            self._checkpoints = {
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
        already = await self._published_since()
        dup = [job for job in outbox if job in already]
        if dup:
            async with self._fence.transaction(self._pool) as conn:
                await conn.execute(
                    "DELETE FROM completion_outbox WHERE job_id = ANY($1::bigint[])", dup
                )
        for job in dup:
            del outbox[job]
        log.info("completion outbox recovered", pending=len(outbox), already_published=len(dup))
        if outbox:
            self.committed(outbox)
        return len(outbox)

    async def _published_since(self) -> dict[int, tuple[int, int]]:
        """Job id -> (partition, offset) of every completion on the topic after the checkpoint."""
        consumer = AIOKafkaConsumer(**self._consumer_options, enable_auto_commit=False)
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(self._topic) or set()
            tps = [TopicPartition(self._topic, p) for p in parts]
            if not tps:
                return {}
            consumer.assign(tps)
            # Where the log ends: the broker's answer to ListOffsets, and the high watermark of
            # each fetch (some brokers' ListOffsets lags acknowledged writes: tansu's S3
            # engine does). Read until both are reached.
            ends = await consumer.end_offsets(tps)
            seen: dict[int, tuple[int, int]] = {}
            for tp in tps:
                consumer.seek(tp, self._checkpoints.get(tp.partition, 0))
            remaining = set(tps)
            deadline = time.monotonic() + 30
            while remaining and time.monotonic() < deadline:
                batch = await consumer.getmany(*remaining, timeout_ms=500)
                for tp, msgs in batch.items():
                    for msg in msgs:
                        if msg.key:
                            seen[int(msg.key)] = (tp.partition, msg.offset)
                for tp in list(remaining):
                    high = max(ends[tp], consumer.highwater(tp) or 0)
                    if consumer.highwater(tp) is not None and await consumer.position(tp) >= high:
                        remaining.discard(tp)
            if remaining:
                raise KafkaTimeoutError(f"completion topic not read to its end: {remaining}")
            return seen
        finally:
            await consumer.stop()

    # ---- publishing -------------------------------------------------------------------------

    async def run(self) -> None:
        backoff = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                if self._ambiguous:
                    self._confirm(await self._published_since())
                    self._ambiguous = False
                if self._pending:
                    await self._send(dict(self._pending))
                if self._acked:
                    await self._delete()
                backoff = 0.1
                self.last_error = None
            except (KafkaError, *DB_ERRORS) as exc:
                reraise_if_cancelled()
                if isinstance(exc, KafkaError) and not broker_retriable(exc):
                    raise
                if not isinstance(exc, KafkaError) and not is_transient(exc):
                    raise
                self.last_error = repr(exc)
                log.error("publishing completions failed; retrying", error=repr(exc),
                          retry_in=backoff, unsent=len(self._pending),
                          unconfirmed_deletes=len(self._acked))  # fmt: skip
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            if self._pending or self._acked or self._ambiguous:
                self._wake.set()
            else:
                self.oldest = None
                self._idle.set()

    def _confirm(self, on_topic: dict[int, tuple[int, int]]) -> None:
        for job, (partition, offset) in on_topic.items():
            if self._pending.pop(job, None) is not None:
                self._mark_acked(job, partition, offset)

    def _mark_acked(self, job: int, partition: int, offset: int) -> None:
        self._acked.add(job)
        self._ends[partition] = max(self._ends.get(partition, 0), offset + 1)

    async def _send(self, batch: dict[int, bytes]) -> None:
        futures = {
            job: await self._producer.send(self._topic, value, key=completion_key(job))
            for job, value in batch.items()
        }
        failure: BaseException | None = None
        for job, future in futures.items():
            try:
                meta = await future
            except MessageSizeTooLargeError as exc:
                # Completions are cut to fit Kafka's default limit; a broker set lower than
                # that refuses this one for good. The job's outcome stays in the jobs table.
                log.error("completion refused by the broker for its size; dropped", job=job,
                          bytes=len(batch[job]), error=repr(exc))  # fmt: skip
                self._pending.pop(job, None)
                self._acked.add(job)
                continue
            except KafkaError as exc:
                failure = failure or exc
                continue
            self._pending.pop(job, None)
            self._mark_acked(job, meta.partition, meta.offset)
        if failure is not None:
            self._ambiguous = True  # some may be on the topic: look before sending again
            raise failure

    async def _delete(self) -> None:
        done = sorted(self._acked)
        async with self._fence.transaction(self._pool) as conn:
            await conn.execute(
                "DELETE FROM completion_outbox WHERE job_id = ANY($1::bigint[])", done
            )
            await conn.executemany(
                OFFSET_UPSERT,
                [(self._checkpoint, self._topic, part, off) for part, off in self._ends.items()],
            )
        self._checkpoints.update(self._ends)
        self._acked.difference_update(done)
        self.published += len(done)
        if self._on_published is not None:
            self._on_published(len(done))

    async def flush(self, timeout_s: float = 10.0) -> None:
        await asyncio.wait_for(self._idle.wait(), timeout_s)
