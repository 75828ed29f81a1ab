"""Write-behind of dispatcher state: everything that changed, plus the consumed offsets that
produced it, committed together in one transaction per batch (group commit).

The hot path only records *that* something changed; a single task turns the accumulated changes
into one transaction. Batches grow with load, so commits per second stay bounded. Callbacks run
after a commit: acknowledgements to pilots and the completion outbox hand-off happen only once
the outcome is durable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from prompt.dispatcher.model import Job

log = structlog.get_logger(__name__)

_JOB_UPDATE = """
UPDATE jobs SET state = $2, attempt = $3, pilot_id = $4, image_uri = $5, snaps_mask = $6,
    cache_hit = $7, error = $8, deadline = $9, image_arrived_at = $10, image_consumed_at = $11,
    dispatched_at = $12, started_at = $13, finished_at = $14, completed_at = $15, result = $16
WHERE id = $1"""
_OUTBOX = """INSERT INTO completion_outbox (job_id, value, created_at) VALUES ($1, $2, $3)
ON CONFLICT (job_id) DO NOTHING"""
_HELD = """INSERT INTO held_images (instrument, group_id, detector, snap, uri, event_time,
    consumed_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"""
_VISIT = "UPDATE visits SET status = $2 WHERE id = $1 AND status = 'active'"
_RESURRECTED = "UPDATE visits SET resurrected_at = $2 WHERE id = $1"
_PILOT = """INSERT INTO pilots (id, host, slots, state, cache_summary, registered_at, last_seen)
VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host,
    slots = EXCLUDED.slots, state = EXCLUDED.state, cache_summary = EXCLUDED.cache_summary,
    last_seen = EXCLUDED.last_seen"""
OFFSET_UPSERT = """INSERT INTO consumer_offsets (consumer, topic, partition, next_offset)
VALUES ($1, $2, $3, $4) ON CONFLICT (consumer, topic, partition) DO UPDATE
SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset)"""


def job_row(job: Job) -> tuple[Any, ...]:
    return (
        job.id, job.state.value, job.attempt, job.pilot_id, job.image_uri, job.snaps_mask,
        job.cache_hit, job.error, job.deadline, job.image_arrived, job.image_consumed,
        job.dispatched, job.started, job.finished, job.completed, job.result,
    )  # fmt: skip


@dataclass
class Batch:
    jobs: dict[int, Job] = field(default_factory=dict)
    outbox: dict[int, bytes] = field(default_factory=dict)
    held: list[tuple[Any, ...]] = field(default_factory=list)
    visits: dict[int, str] = field(default_factory=dict)
    resurrected: dict[int, float] = field(default_factory=dict)
    pilots: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    after: list[Callable[[], None]] = field(default_factory=list)

    def empty(self) -> bool:
        return not (
            self.jobs or self.outbox or self.held or self.visits or self.pilots or self.offsets
            or self.after or self.resurrected
        )  # fmt: skip

    def merge_newer(self, newer: Batch) -> Batch:
        """This (failed) batch with a newer one applied on top, for the retry."""
        self.jobs.update(newer.jobs)
        self.outbox.update(newer.outbox)
        self.held.extend(newer.held)
        self.visits.update(newer.visits)
        self.resurrected.update(newer.resurrected)
        self.pilots.update(newer.pilots)
        for key, off in newer.offsets.items():
            self.offsets[key] = max(off, self.offsets.get(key, 0))
        self.after.extend(newer.after)
        return self


class StateWriter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        consumer: str,
        on_outbox: Callable[[dict[int, bytes]], None],
        *,
        observe_commit: Callable[[float, int], None] | None = None,
        coalesce_s: float = 0.05,
    ) -> None:
        """``coalesce_s``: after the first change, wait this long for more before committing,
        so a burst becomes one transaction that runs after the burst, not during it
        (measured: 5 ms -> 50 ms took dispatch p99 from ~27.5 to ~25 ms on 2 cores)."""
        self._pool = pool
        self._consumer = consumer
        self._on_outbox = on_outbox
        self._observe = observe_commit
        self._coalesce_s = coalesce_s
        self._batch = Batch()
        self._wake = asyncio.Event()
        self._committed = asyncio.Event()
        self._generation = 0  # batches taken
        self._done_generation = 0  # batches committed

    # ---- recording (hot path: no I/O) --------------------------------------------------------

    def job(
        self,
        job: Job,
        *,
        completion: bytes | None = None,
        after: Callable[[], None] | None = None,
    ) -> None:
        self._batch.jobs[job.id] = job
        if completion is not None:
            self._batch.outbox[job.id] = completion
        if after is not None:
            self._batch.after.append(after)
        self._wake.set()

    def held(self, row: tuple[Any, ...]) -> None:
        self._batch.held.append(row)
        self._wake.set()

    def visit_status(self, visit_id: int, status: str) -> None:
        self._batch.visits[visit_id] = status
        self._wake.set()

    def visit_resurrected(self, visit_id: int, committed_at: float) -> None:
        """When the resurrection transaction had committed (measured by the dispatcher)."""
        self._batch.resurrected[visit_id] = committed_at
        self._wake.set()

    def pilot(self, row: tuple[Any, ...]) -> None:
        self._batch.pilots[row[0]] = row
        self._wake.set()

    def offset(self, topic: str, partition: int, next_offset: int) -> None:
        key = (topic, partition)
        if next_offset > self._batch.offsets.get(key, -1):
            self._batch.offsets[key] = next_offset
        self._wake.set()

    def after_commit(self, callback: Callable[[], None]) -> None:
        self._batch.after.append(callback)
        self._wake.set()

    # ---- committing --------------------------------------------------------------------------

    async def run(self) -> None:
        pending: Batch | None = None
        backoff = 0.05
        while True:
            if pending is None:
                await self._wake.wait()
                if self._coalesce_s:
                    await asyncio.sleep(self._coalesce_s)
            self._wake.clear()
            batch, self._batch = self._batch, Batch()
            self._generation += 1
            if pending is not None:
                batch = pending.merge_newer(batch)
                pending = None
            if batch.empty():
                self._finish()
                continue
            try:
                await self._commit(batch)
                backoff = 0.05
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
                log.error("state commit failed; retrying", error=repr(exc), retry_in=backoff)
                pending = batch
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            self._finish()
            if batch.outbox:
                self._on_outbox(batch.outbox)
            for callback in batch.after:
                callback()

    def _finish(self) -> None:
        self._done_generation = self._generation
        self._committed.set()
        self._committed = asyncio.Event()

    async def _commit(self, batch: Batch) -> None:
        t0 = time.perf_counter()
        now = time.time()
        async with self._pool.acquire() as conn, conn.transaction():
            if batch.jobs:
                await conn.executemany(_JOB_UPDATE, [job_row(j) for j in batch.jobs.values()])
            if batch.outbox:
                await conn.executemany(_OUTBOX, [(k, v, now) for k, v in batch.outbox.items()])
            if batch.held:
                await conn.executemany(_HELD, batch.held)
            if batch.visits:
                await conn.executemany(_VISIT, list(batch.visits.items()))
            if batch.resurrected:
                await conn.executemany(_RESURRECTED, list(batch.resurrected.items()))
            if batch.pilots:
                await conn.executemany(_PILOT, list(batch.pilots.values()))
            if batch.offsets:
                await conn.executemany(
                    OFFSET_UPSERT,
                    [(self._consumer, t, p, o) for (t, p), o in batch.offsets.items()],
                )
        if self._observe is not None:
            self._observe(time.perf_counter() - t0, len(batch.jobs))

    async def flush(self) -> None:
        """Return once everything recorded before the call is committed."""
        target = self._generation + 1
        self._wake.set()
        while self._done_generation < target:
            await self._committed.wait()
