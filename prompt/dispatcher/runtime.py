"""The engine's adapter: carries out its effects, and the decisions that need the database.

Effects become write-behind records (``writer.py``), frames on the pilots' connections (kept
here, by pilot id) and closed connections. A resurrection, an ignored visit and a cancel for a
group not yet announced are each one awaited, fenced transaction with the event's offset; the
engine is then told how it went. Nothing here decides anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog

from prompt.channel.protocol import Channel
from prompt.dispatcher.batch import OFFSET_UPSERT
from prompt.dispatcher.engine import (
    AfterCommit,
    BuildFirst,
    Decision,
    Disconnect,
    Effect,
    Engine,
    HeldApplied,
    Ignore,
    Resurrect,
    SaveHeld,
    SaveJob,
    SavePilot,
    SaveResurrectedAt,
    SaveVisitStatus,
    Send,
)
from prompt.dispatcher.engine.book import Announced
from prompt.dispatcher.leadership import Fence
from prompt.dispatcher.writer import StateWriter
from prompt.events import ImageArrival, NextVisit
from prompt.metrics import DispatcherMetrics
from prompt.tasks import load_active_tasks

log = structlog.get_logger(__name__)

_IGNORED = """INSERT INTO visits (instrument, group_id, status, ignore_reason, survey, filters,
    next_visit, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (instrument, group_id) DO NOTHING"""
_VISIT = """INSERT INTO visits (instrument, group_id, task_id, survey, filters, ra_deg, dec_deg,
    start_time, duration_s, nimages, expires_at, next_visit, received_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (instrument, group_id) DO NOTHING RETURNING id"""
_JOBS = """INSERT INTO jobs (visit_id, detector, max_attempts)
SELECT $1, d, $2 FROM unnest($3::int[]) AS d RETURNING id, detector"""
_CANCELED = """INSERT INTO visits (instrument, group_id, status, ignore_reason, received_at)
VALUES ('*', $1, 'canceled', 'canceled before announced', $2)
ON CONFLICT (instrument, group_id) DO NOTHING"""
Position = tuple[str, int, int] | None
"""(topic, partition, offset) of the event a transaction also stores the offset of."""


class Runtime:
    def __init__(
        self,
        engine: Engine,
        pool: asyncpg.Pool,
        fence: Fence,
        writer: StateWriter,
        consumer: str,
        metrics: DispatcherMetrics,
    ) -> None:
        self.engine = engine
        self.pool = pool
        self.fence = fence
        self.writer = writer
        self.metrics = metrics
        self._consumer = consumer
        self.channels: dict[str, Channel] = {}
        self._carry: dict[type, Callable[[Any], None]] = {
            Send: self._send,
            SaveJob: self._save_job,
            SaveHeld: lambda e: writer.held(e.row),
            HeldApplied: lambda e: writer.held_applied(e.key),
            SaveVisitStatus: lambda e: writer.visit_status(e.visit_id, e.status),
            SaveResurrectedAt: lambda e: writer.visit_resurrected(e.visit_id, e.at),
            SavePilot: lambda e: writer.pilot(e.row),
            AfterCommit: lambda e: writer.after_commit(lambda: self._send(e.send)),
            Disconnect: self._disconnect,
        }

    # ---- effects ----------------------------------------------------------------------------

    def apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            self._carry[type(effect)](effect)

    def hand_off(self) -> None:
        """Write the frames queued for pilots now, not at the end of this event-loop step."""
        for channel in self.channels.values():
            channel.flush()

    def _send(self, send: Send) -> None:
        channel = self.channels.get(send.pilot)
        try:
            if channel is None:
                raise ConnectionResetError("no connection")
            channel.send_frame(send.frame)
        except ConnectionError:
            self.apply(self.engine.disconnected(send.pilot))

    def _save_job(self, save: SaveJob) -> None:
        then = save.then
        after = None if then is None else (lambda: self._send(then))
        self.writer.job(save.job, completion=save.completion, after=after)

    def _disconnect(self, effect: Disconnect) -> None:
        channel = self.channels.pop(effect.pilot, None)
        if channel is not None:
            channel.abort()

    # ---- the observatory's events -----------------------------------------------------------

    async def next_visit(
        self, nv: NextVisit, record: dict[str, Any], consumed: float, at: Position
    ) -> None:
        """A database error propagates with the engine unchanged (the intake retries the event
        or, if the database refuses the record itself, dead-letters it)."""
        t0 = time.perf_counter()
        decision = self.engine.announce(nv, record, consumed)
        if isinstance(decision, BuildFirst):  # its images came first: build the visit now
            decision = await self._decide_from_database(decision.announced)
        await self._carry_out(decision, nv, record, consumed, at, t0)
        if at is not None:
            self.writer.offset(at[0], at[1], at[2] + 1)

    async def _carry_out(
        self,
        decision: Decision,
        nv: NextVisit,
        record: dict[str, Any],
        consumed: float,
        at: Position,
        t0: float,
    ) -> None:
        if isinstance(decision, Ignore):
            if nv.instrument and nv.group_id:
                async with self.fence.transaction(self.pool) as conn:
                    await conn.execute(
                        _IGNORED, nv.instrument, nv.group_id, decision.status, decision.reason,
                        nv.survey, nv.filters, record, consumed,
                    )  # fmt: skip
                    await self._store_offset(conn, at)
            self.apply(self.engine.ignored(nv, decision))
        elif isinstance(decision, Resurrect):
            try:
                visit_id, jobs = await self._resurrect(nv, record, decision, consumed, at)
            except BaseException:
                self.engine.resurrect_failed(nv)
                raise
            elapsed = time.perf_counter() - t0
            visit, effects = self.engine.resurrected(
                nv, decision.task, visit_id, jobs, consumed, decision.expires_at
            )
            if visit is not None:
                self.metrics.resurrect.observe(elapsed)
                self.writer.visit_resurrected(visit.id, consumed + elapsed)
                log.info("task resurrected", group=nv.group_id, instrument=nv.instrument,
                         task=decision.task.name, jobs=len(jobs),
                         resurrect_ms=round(elapsed * 1e3, 2))  # fmt: skip
            self.apply(effects)

    async def _resurrect(
        self,
        nv: NextVisit,
        record: dict[str, Any],
        decision: Resurrect,
        consumed: float,
        at: Position,
    ) -> tuple[int | None, list[tuple[int, int]]]:
        """The visit, one job per detector and the offset, in one transaction."""
        task = decision.task
        ra, dec = nv.position if nv.coordinate_system == 2 else (None, None)
        async with self.fence.transaction(self.pool) as conn:
            visit_id = await conn.fetchval(
                _VISIT, nv.instrument, nv.group_id, task.id, nv.survey, nv.filters, ra, dec,
                nv.start_time, nv.duration, nv.nimages, decision.expires_at, record, consumed,
            )  # fmt: skip
            rows = []
            if visit_id is not None:
                rows = await conn.fetch(
                    _JOBS, visit_id, task.spec.max_attempts, list(task.detectors)
                )
                await conn.execute(
                    "DELETE FROM held_images WHERE instrument = $1 AND group_id = $2",
                    nv.instrument,
                    nv.group_id,
                )
            await self._store_offset(conn, at)
        return visit_id, [(r["id"], r["detector"]) for r in rows]

    async def _store_offset(self, conn: asyncpg.Connection, at: Position) -> None:
        if at is not None:
            await conn.execute(OFFSET_UPSERT, self._consumer, at[0], at[1], at[2] + 1)

    async def cancel(self, group: str, consumed: float, at: Position) -> None:
        done, effects = self.engine.cancel(group)
        self.apply(effects)
        if not done:
            async with self.fence.transaction(self.pool) as conn:
                await conn.execute(_CANCELED, group, consumed)
                await self._store_offset(conn, at)
            self.apply(self.engine.canceled_unannounced(group, consumed))
        if at is not None:
            self.writer.offset(at[0], at[1], at[2] + 1)

    def image_now(self, arrival: ImageArrival, consumed: float) -> bool:
        """The image applied in memory; False (and nothing done) if its visit must be built
        from the database first: then call ``image``."""
        build, effects = self.engine.image(arrival, consumed)
        self.apply(effects)
        return build is None

    async def image(self, arrival: ImageArrival, consumed: float) -> None:
        """In memory, except with a scheduling that builds a visit at its first image: then
        its task is read from the database and resurrected first, on the image path."""
        build, effects = self.engine.image(arrival, consumed)
        self.apply(effects)
        if isinstance(build, BuildFirst):
            noted = build.announced
            t0 = time.perf_counter()
            decision = await self._decide_from_database(noted)
            await self._carry_out(decision, noted.nv, noted.record, noted.received, None, t0)
            _, effects = self.engine.image(arrival, consumed)
            self.apply(effects)

    async def _decide_from_database(self, noted: Announced) -> Decision:
        """A noted visit's decision, its task read from the database (as a system without
        resurrection would)."""
        async with self.pool.acquire() as conn:
            tasks = await load_active_tasks(conn)
        return self.engine.decide(noted.nv, noted.received, tasks)

    def sweep(self, *, images_read: bool) -> None:
        self.apply(self.engine.sweep(images_read=images_read))
