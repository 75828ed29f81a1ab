"""The dispatcher: resurrects tasks on next-visit, preloads pilots, pushes jobs on image arrival,
retries, expires and completes them. All of it runs on one event loop from in-memory state;
durable state is written behind by the StateWriter.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter, OrderedDict, deque
from typing import Any

import asyncpg
import structlog

from prompt.bounds import bound_counts, bound_error, bound_log, bound_stages, finite_or_none
from prompt.channel import protocol as p
from prompt.channel.protocol import FrameTooLargeError
from prompt.dispatcher.completion import encode_completion
from prompt.dispatcher.config import DispatcherConfig
from prompt.dispatcher.held import HeldImages
from prompt.dispatcher.leadership import Fence
from prompt.dispatcher.model import (
    ON_PILOT,
    TERMINAL,
    WAITING_FOR_IMAGE,
    Job,
    JobState,
    Visit,
    VisitKey,
)
from prompt.dispatcher.pilots import PilotRegistry, PilotSession
from prompt.dispatcher.writer import OFFSET_UPSERT, StateWriter
from prompt.events import AvroCodec, EventError, ImageArrival, NextVisit
from prompt.instruments import detector_name
from prompt.metrics import DispatcherMetrics
from prompt.tasks import Task, load_active_tasks, match_task

log = structlog.get_logger(__name__)

CLOSED_MEMORY = 20_000
PILOT_ROW_REFRESH_S = 5.0


class HeldOverflowError(EventError):
    """An image for a group not (yet) announced, beyond what may be held: dead-lettered so
    it can be replayed, instead of growing memory without bound."""

    reason = "held_full"


class Dispatcher:
    def __init__(
        self,
        config: DispatcherConfig,
        pool: asyncpg.Pool,
        fence: Fence,
        writer: StateWriter,
        completion_codec: AvroCodec,
        metrics: DispatcherMetrics,
        tasks: list[Task],
    ) -> None:
        self.config = config
        self.pool = pool
        self.fence = fence
        self.writer = writer
        self.completion_codec = completion_codec
        self.metrics = metrics
        self.tasks = tasks
        self.pilots = PilotRegistry()
        self.visits: dict[VisitKey, Visit] = {}
        self.jobs: dict[int, Job] = {}
        self.resurrecting: set[VisitKey] = set()
        self.held = HeldImages(
            per_group=config.held_per_group, total=config.held_total, ttl_s=config.held_ttl_s
        )
        self.closed: OrderedDict[VisitKey, str] = OrderedDict()
        self.canceled_groups: OrderedDict[str, float] = OrderedDict()
        """Groups canceled before they were announced (bounded, oldest forgotten first)."""
        self._ready: list[tuple[float, int, Job]] = []
        self._expiry: list[tuple[float, int, VisitKey]] = []
        self._seq = itertools.count()
        self._payloads: dict[int, dict[str, Any]] = {}
        self._labels: dict[int, frozenset[str]] = {}
        self.counts: dict[str, int] = {"duplicates": 0, "held": 0, "retries": 0}
        self.warm = config.mode == "warm"
        # For the operator page: the last visits and the jobs that went wrong.
        self.recent: deque[dict[str, Any]] = deque(maxlen=12)
        self.problems: deque[dict[str, Any]] = deque(maxlen=100)
        # cold mode: next-visits only noted; the visit is built when its first image arrives
        self.announced: dict[VisitKey, tuple[NextVisit, dict[str, Any], float]] = {}

    # ---- helpers ----------------------------------------------------------------------------

    def _payload(self, task: Task) -> dict[str, Any]:
        payload = self._payloads.get(task.id)
        if payload is None:
            payload = task.spec.payload.model_dump(mode="json")
            self._payloads[task.id] = payload
            self._labels[task.id] = frozenset(task.spec.requirements.labels)
        return payload

    def _task_labels(self, task: Task) -> frozenset[str]:
        self._payload(task)
        return self._labels[task.id]

    def _close_key(self, key: VisitKey, why: str) -> None:
        self.closed[key] = why
        while len(self.closed) > CLOSED_MEMORY:
            self.closed.popitem(last=False)

    def _remember_canceled(self, group: str, when: float) -> None:
        self.canceled_groups[group] = when
        while len(self.canceled_groups) > CLOSED_MEMORY:
            self.canceled_groups.popitem(last=False)

    def _duplicate(self, kind: str) -> None:
        self.counts["duplicates"] += 1
        self.metrics.ignored.labels(kind, "duplicate").inc()

    # ---- next-visit -------------------------------------------------------------------------

    async def on_next_visit(
        self,
        nv: NextVisit,
        record: dict[str, Any],
        topic: str,
        partition: int,
        offset: int,
        consumed: float,
    ) -> None:
        """Handle one validated next-visit; the offset is stored with whatever it produced.

        A database error propagates with nothing changed in memory (the caller retries it or,
        if the database refuses the record itself, dead-letters it)."""
        t0 = time.perf_counter()
        key = (nv.instrument, nv.group_id)
        reason: str | None = None
        if not nv.instrument:
            reason = "not_observation"
        elif (
            key in self.visits
            or key in self.resurrecting
            or key in self.closed
            or key in self.announced
        ):
            self._duplicate("next-visit")
            self.writer.offset(topic, partition, offset + 1)
            return
        elif nv.group_id in self.canceled_groups:
            reason = "canceled"
        elif nv.efd_stamp and consumed - nv.efd_stamp > self.config.stale_after_s:
            reason = "stale"
        if reason is None and not self.warm:
            self.announced[key] = (nv, record, consumed)
            self.writer.offset(topic, partition, offset + 1)
            return
        task = match_task(self.tasks, nv) if reason is None else None
        if reason is None and task is None:
            reason = "no_task"
        if reason is not None or task is None:
            self.metrics.ignored.labels("next-visit", reason or "no_task").inc()
            await self._record_ignored(
                nv, record, reason or "no_task", consumed, topic, partition, offset
            )
            return
        await self._resurrect(nv, record, task, topic, partition, offset, consumed, t0)

    async def _record_ignored(
        self,
        nv: NextVisit,
        record: dict[str, Any],
        reason: str,
        consumed: float,
        topic: str,
        partition: int,
        offset: int,
    ) -> None:
        if not nv.instrument or not nv.group_id:
            self.writer.offset(topic, partition, offset + 1)
            return
        status = "canceled" if reason == "canceled" else "ignored"
        async with self.fence.transaction(self.pool) as conn:
            await conn.execute(
                """INSERT INTO visits (instrument, group_id, status, ignore_reason, survey,
                       filters, next_visit, received_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                   ON CONFLICT (instrument, group_id) DO NOTHING""",
                nv.instrument, nv.group_id, status, reason, nv.survey, nv.filters, record,
                consumed,
            )  # fmt: skip
            await conn.execute(OFFSET_UPSERT, self.config.name, topic, partition, offset + 1)
        self._close_key((nv.instrument, nv.group_id), status)
        self._drop_held((nv.instrument, nv.group_id))
        log.info("visit ignored", group=nv.group_id, instrument=nv.instrument, reason=reason)

    async def _resurrect(
        self,
        nv: NextVisit,
        record: dict[str, Any],
        task: Task,
        topic: str | None,
        partition: int,
        offset: int,
        consumed: float,
        t0: float,
    ) -> None:
        key = (nv.instrument, nv.group_id)
        self.resurrecting.add(key)  # images arriving meanwhile are held (and persisted)
        try:
            expires = nv.start_time - self.config.tai_minus_utc_s if nv.start_time else consumed
            expires += max(nv.duration, 0.0) * 2 + task.spec.image_timeout_s
            ra, dec = nv.position if nv.coordinate_system == 2 else (None, None)
            async with self.fence.transaction(self.pool) as conn:
                visit_id = await conn.fetchval(
                    """INSERT INTO visits (instrument, group_id, task_id, survey, filters, ra_deg,
                           dec_deg, start_time, duration_s, nimages, expires_at, next_visit,
                           received_at, resurrected_at)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                       ON CONFLICT (instrument, group_id) DO NOTHING RETURNING id""",
                    nv.instrument, nv.group_id, task.id, nv.survey, nv.filters, ra, dec,
                    nv.start_time, nv.duration, nv.nimages, expires, record, consumed, None,
                )  # fmt: skip
                rows = []
                if visit_id is not None:
                    rows = await conn.fetch(
                        """INSERT INTO jobs (visit_id, detector, max_attempts)
                           SELECT $1, d, $2 FROM unnest($3::int[]) AS d
                           RETURNING id, detector""",
                        visit_id,
                        task.spec.max_attempts,
                        list(task.detectors),
                    )
                    await conn.execute(
                        "DELETE FROM held_images WHERE instrument = $1 AND group_id = $2",
                        nv.instrument,
                        nv.group_id,
                    )
                if topic is not None:
                    await conn.execute(
                        OFFSET_UPSERT, self.config.name, topic, partition, offset + 1
                    )
        finally:
            self.resurrecting.discard(key)
        if visit_id is None:  # another instance (or an earlier life of this one) made it
            self._duplicate("next-visit")
            return
        elapsed = time.perf_counter() - t0
        self.metrics.resurrect.observe(elapsed)
        self.writer.visit_resurrected(visit_id, consumed + elapsed)
        visit = Visit(visit_id, nv, task, consumed, expires)
        for row in rows:
            job = Job(row["id"], visit, row["detector"], task.spec.max_attempts)
            visit.jobs[job.detector] = job
            self.jobs[job.id] = job
        visit.open_jobs = len(rows)
        self.visits[key] = visit
        heapq.heappush(self._expiry, (expires, next(self._seq), key))
        log.info(
            "task resurrected", group=nv.group_id, instrument=nv.instrument, task=task.name,
            jobs=len(rows), resurrect_ms=round((time.perf_counter() - t0) * 1e3, 2),
        )  # fmt: skip
        if self.warm:
            self._assign_and_preload(visit)
        early = self.held.pop(key)
        for arrival, when in early:
            self._apply_image(visit, arrival, when)
        if early:
            self.writer.held_applied(key)

    def _assign_and_preload(self, visit: Visit) -> None:
        labels = self._task_labels(visit.task)
        hints: dict[str, list[dict[str, Any]]] = {}
        nv = visit.nv
        valid_until = visit.expires_at + visit.task.spec.deadline_s
        for job in visit.jobs.values():
            pilot = self.pilots.choose_for_preload(nv.instrument, job.detector, nv.filters, labels)
            if pilot is None:
                continue
            job.pilot_id = pilot.id
            job.state = JobState.PRELOADING
            pilot.assigned += 1
            hints.setdefault(pilot.id, []).append(
                {
                    "job": job.id,
                    "instrument": nv.instrument,
                    "detector": job.detector,
                    "filter": nv.filters,
                    "day_obs": visit.day_obs,
                    "group": nv.group_id,
                    "ra": nv.position[0],
                    "dec": nv.position[1],
                    "valid_until": valid_until,
                }
            )
            self.writer.job(job)
        for pilot_id, items in hints.items():
            self.pilots.pilots[pilot_id].send({"t": p.PRELOAD, "items": items})

    # ---- cancel -----------------------------------------------------------------------------

    async def on_canceled(
        self, group: str, topic: str, partition: int, offset: int, consumed: float
    ) -> None:
        matched = [v for v in self.visits.values() if v.nv.group_id == group]
        if not matched:
            if group and group not in self.canceled_groups:
                async with self.fence.transaction(self.pool) as conn:
                    await conn.execute(
                        """INSERT INTO visits (instrument, group_id, status, ignore_reason,
                               received_at)
                           VALUES ('*', $1, 'canceled', 'canceled before announced', $2)
                           ON CONFLICT (instrument, group_id) DO NOTHING""",
                        group,
                        consumed,
                    )
                    await conn.execute(
                        OFFSET_UPSERT, self.config.name, topic, partition, offset + 1
                    )
                self._remember_canceled(group, consumed)
                for key in self.held.of_group(group):
                    self._drop_held(key)
                return
            self.writer.offset(topic, partition, offset + 1)
            return
        for visit in matched:
            n = 0
            for job in list(visit.jobs.values()):
                if job.state in WAITING_FOR_IMAGE or job.state is JobState.READY:
                    job.error = "visit canceled"
                    self._complete(job, JobState.CANCELED)
                    n += 1
            log.info("visit canceled", group=group, canceled_jobs=n)
            self.writer.visit_status(visit.id, "canceled")
        self.writer.offset(topic, partition, offset + 1)

    # ---- images -----------------------------------------------------------------------------

    async def handle_image(self, arrival: ImageArrival, consumed: float) -> None:
        """Intake's entry point. Warm: all in memory. Cold: the first image of a visit builds it
        (task definition read from the database, jobs created) on the image path."""
        if not self.warm:
            key = (arrival.instrument, arrival.group_id)
            announced = self.announced.get(key)
            if announced is not None:
                nv, record, received = announced
                t0 = time.perf_counter()
                async with self.pool.acquire() as conn:
                    tasks = await load_active_tasks(conn)
                task = match_task(tasks, nv)
                if task is not None:
                    await self._resurrect(nv, record, task, None, 0, 0, received, t0)
                self.announced.pop(key, None)
        self.on_image(arrival, consumed)

    def on_image(self, arrival: ImageArrival, consumed: float) -> None:
        """Apply an image to its visit, or hold it until the visit exists. Raises
        HeldOverflowError if it can be neither (the caller dead-letters it)."""
        key = (arrival.instrument, arrival.group_id)
        visit = self.visits.get(key)
        if visit is not None:
            self._apply_image(visit, arrival, consumed)
            return
        if key in self.closed or arrival.group_id in self.canceled_groups:
            self.metrics.ignored.labels("image-arrival", "visit_closed").inc()
            return
        outcome = self.held.add(arrival, consumed)
        if outcome == "duplicate":
            self._duplicate("image-arrival")
            return
        if outcome != "held":
            limit = self.held.per_group if outcome == "group_full" else self.held.total
            raise HeldOverflowError(
                f"image for {arrival.group_id!r} detector {arrival.detector} snap {arrival.snap}"
                f" cannot be held: {'its group holds' if outcome == 'group_full' else 'the'}"
                f" {limit} images waiting for a next-visit{' in all' if outcome == 'full' else ''}"
            )
        self.counts["held"] += 1
        self.writer.held(
            (arrival.instrument, arrival.group_id, arrival.detector, arrival.snap, arrival.uri,
             arrival.event_time or consumed, consumed)
        )  # fmt: skip

    def _drop_held(self, key: VisitKey, reason: str = "visit_closed") -> None:
        """Images that waited for a next-visit that turned out ignored or canceled."""
        dropped = self.held.pop(key)
        if dropped:
            self.metrics.ignored.labels("image-arrival", reason).inc(len(dropped))

    def _apply_image(self, visit: Visit, arrival: ImageArrival, consumed: float) -> None:
        job = visit.jobs.get(arrival.detector)
        if job is None:
            self.metrics.ignored.labels("image-arrival", "detector_not_in_task").inc()
            return
        bit = 1 << arrival.snap
        if job.snaps_mask & bit or job.state not in WAITING_FOR_IMAGE:
            self._duplicate("image-arrival")
            return
        job.snaps_mask |= bit
        job.snap_uris[arrival.snap] = arrival.uri
        if arrival.obs_id:
            job.snap_obs_ids[arrival.snap] = arrival.obs_id
        arrived = arrival.event_time or consumed
        job.image_arrived = max(job.image_arrived or 0.0, arrived)
        job.image_consumed = consumed
        if job.snaps_complete():
            job.deadline = job.image_arrived + visit.task.spec.deadline_s
            job.state = JobState.READY
            self._schedule(job)
        self.writer.job(job)

    # ---- scheduling -------------------------------------------------------------------------

    def _schedule(self, job: Job) -> None:
        if not self.warm:  # polling baseline: jobs wait until a pilot asks
            assert job.deadline is not None
            heapq.heappush(self._ready, (job.deadline, next(self._seq), job))
            return
        pilot = self.pilots.choose_for_run(
            job,
            self._task_labels(job.visit.task),
            may_leave_cache=not self._worth_waiting_for_holder(job, time.time()),
        )
        if pilot is None:
            assert job.deadline is not None
            heapq.heappush(self._ready, (job.deadline, next(self._seq), job))
            return
        self._push(job, pilot)

    def _fields(self, job: Job) -> dict[str, Any]:
        visit = job.visit
        base = visit.base_fields
        if not base:
            nv = visit.nv
            base.update(
                instrument=nv.instrument,
                group=nv.group_id,
                filter=nv.filters,
                band=nv.filters.split("_", 1)[0],
                day_obs=visit.day_obs,
                nimages=visit.snaps_expected,
                ra=nv.position[0],
                dec=nv.position[1],
                rotation=nv.camera_angle,
                survey=nv.survey,
                task=visit.task.name,
            )
        obs_id = job.obs_id
        return {
            **base,
            "visit": obs_id or base["group"],
            "obs_id": obs_id,
            "detector": job.detector,
            "detector_name": detector_name(base["instrument"], job.detector),
            "uri": job.image_uri or "",
            "uris": job.uris,
            "job": job.id,
            "attempt": job.attempt,
        }

    def _push(self, job: Job, pilot: PilotSession) -> None:
        if job.attempt:
            self.counts["retries"] += 1
            self.metrics.retries.inc()
        job.attempt += 1
        job.state = JobState.SENT
        job.pilot_id = pilot.id
        job.tried.add(pilot.id)
        job.dispatched = time.time()
        job.started = None
        pilot.running[job.id] = job
        try:
            sent = pilot.send(
                {
                    "t": p.JOB,
                    "job": job.id,
                    "attempt": job.attempt,
                    "payload": self._payload(job.visit.task),
                    "fields": self._fields(job),
                    "timeout_s": job.visit.task.spec.job_timeout_s,
                    "deadline": job.deadline,
                }
            )
        except FrameTooLargeError as exc:
            # Deterministic: every pilot would refuse it. Fail now, with the reason.
            pilot.running.pop(job.id, None)
            job.error = f"the job cannot be sent: {exc}"
            self._complete(job, JobState.FAILED)
            return
        self.writer.job(job)
        if not sent:
            self._pilot_disconnected(pilot)

    def fill(self, pilot: PilotSession) -> None:
        """Give a pilot with free slots the ready jobs with the earliest deadlines. A job whose
        calibrations another pilot holds waits for that pilot up to affinity_wait_s."""
        skipped: list[tuple[float, int, Job]] = []
        now = time.time()
        while pilot.free > 0 and self._ready and pilot.accepts(pilot.labels):
            entry = heapq.heappop(self._ready)
            job = entry[2]
            if job.state is not JobState.READY:
                continue
            if not pilot.accepts(self._task_labels(job.visit.task)) or self._wait_for_holder(
                job, pilot, now
            ):
                skipped.append(entry)
                continue
            self._push(job, pilot)
        for entry in skipped:
            heapq.heappush(self._ready, entry)

    def _wait_for_holder(self, job: Job, pilot: PilotSession, now: float) -> bool:
        if job.pilot_id == pilot.id or job.cache_key in pilot.cache:
            return False
        return self._worth_waiting_for_holder(job, now)

    def _worth_waiting_for_holder(self, job: Job, now: float) -> bool:
        """The one affinity rule, on arrival and when a slot frees: a job waits for the pilot
        holding its calibrations while that pilot is there and affinity_wait_s has not run out."""
        waited = now - (job.image_consumed or now)
        return waited < self.config.affinity_wait_s and self.pilots.holder_waiting(job)

    # ---- pilot messages ---------------------------------------------------------------------

    def on_started(self, pilot: PilotSession, msg: dict[str, Any]) -> None:
        job = self.jobs.get(msg["job"])
        if job is None or job.attempt != msg["attempt"] or job.pilot_id != pilot.id:
            return
        if job.state is JobState.SENT:
            job.state = JobState.RUNNING
            job.started = finite_or_none(msg.get("at")) or time.time()
            if job.attempt == 1 and job.image_consumed is not None:
                self.metrics.dispatch.observe(max(0.0, job.started - job.image_consumed))
            self.writer.job(job)

    def on_finished(self, pilot: PilotSession, msg: dict[str, Any]) -> None:
        job_id, attempt = msg["job"], msg["attempt"]

        def ack() -> None:
            pilot.send({"t": p.ACK, "job": job_id, "attempt": attempt})

        job = self.jobs.get(job_id)
        if (
            job is None
            or job.terminal
            or job.attempt != attempt
            or job.pilot_id != pilot.id
            or job.state not in ON_PILOT
        ):
            # A result we already have, or of an attempt that was superseded: nothing to do.
            ack()
            return
        pilot.running.pop(job.id, None)
        job.started = finite_or_none(msg.get("started")) or job.started or time.time()
        job.finished = finite_or_none(msg.get("finished")) or time.time()
        cache_hit = msg.get("cache_hit")
        job.cache_hit = cache_hit if isinstance(cache_hit, bool) else None
        # What a payload produced is bounded and cleaned here, once: it goes to PostgreSQL
        # (no NUL in text) and to Kafka (messages have a size limit).
        job.result = {
            "counts": bound_counts(msg.get("counts")),
            "stages": bound_stages(msg.get("stages")),
            "log": bound_log(msg.get("log") or ""),
        }
        if msg.get("ok") is True:
            job.error = None
            late = job.deadline is not None and job.finished > job.deadline
            self._complete(job, JobState.LATE if late else JobState.FINISHED, after=ack)
        else:
            job.error = bound_error(msg.get("error") or "payload failed")
            self._retry_or_fail(job, after=ack)
        if self.warm:
            self.fill(pilot)

    def on_heartbeat(self, pilot: PilotSession, msg: dict[str, Any]) -> None:
        pilot.last_seen = time.monotonic()
        was_draining = pilot.draining
        pilot.draining = bool(msg.get("draining"))
        cache = msg.get("cache")
        if cache is not None:
            pilot.cache = {(c[0], int(c[1]), c[2]) for c in cache}
        pilot.cache_stats = msg.get("cache_stats") or {}
        if was_draining != pilot.draining:
            log.info("pilot draining", pilot=pilot.id)
        if pilot.last_seen - pilot.persisted_at > PILOT_ROW_REFRESH_S:
            pilot.persisted_at = pilot.last_seen
            self.writer.pilot(self._pilot_row(pilot, "draining" if pilot.draining else "connected"))
        if self.warm and pilot.free > 0 and self._ready:
            self.fill(pilot)

    def on_poll(self, pilot: PilotSession, msg: dict[str, Any]) -> None:
        """A polling pilot asks for work (the cold baseline)."""
        pilot.last_seen = time.monotonic()
        self.fill(pilot)

    def on_preloaded(self, pilot: PilotSession, msg: dict[str, Any]) -> None:
        done = float(msg.get("t_done") or time.time())
        for item in msg.get("items", []):
            self.metrics.preload.labels("hit" if item.get("hit") else "miss").inc()
            job = self.jobs.get(int(item["job"]))
            if job is not None and job.pilot_id == pilot.id:
                job.preloaded = done

    def _retry_or_fail(self, job: Job, *, after: Any = None) -> None:
        budget_left = job.deadline is None or time.time() < job.deadline
        if job.attempt < job.max_attempts and budget_left:
            log.info(
                "job retried", group=job.visit.nv.group_id, detector=job.detector, job=job.id,
                attempt=job.attempt, error=job.error,
            )  # fmt: skip
            job.state = JobState.READY
            if after is not None:
                self.writer.after_commit(after)
            self._schedule(job)
            self.writer.job(job)
            return
        if not budget_left and job.attempt < job.max_attempts:
            job.error = f"{job.error}; no budget left to retry"
        self._complete(job, JobState.FAILED, after=after)

    # ---- pilots coming and going ------------------------------------------------------------

    def pilot_registered(self, pilot: PilotSession, claimed: list[tuple[int, int]]) -> None:
        """A pilot (re)connected. Jobs it says it has stay with it; jobs this dispatcher thought
        it had but it does not mention were lost with its previous connection."""
        held_by_pilot = set(claimed)
        for job_id, job in list(pilot.running.items()):
            if (job_id, job.attempt) not in held_by_pilot:
                del pilot.running[job_id]
                self._lost(job, f"pilot {pilot.id} reconnected without the job")
        for job_id, attempt in claimed:
            claimed_job = self.jobs.get(job_id)
            if (
                claimed_job is not None
                and claimed_job.attempt == attempt
                and claimed_job.state in ON_PILOT
                and claimed_job.pilot_id == pilot.id
            ):
                pilot.running[job_id] = claimed_job
        self.writer.pilot(self._pilot_row(pilot, "connected"))
        if self.warm:
            self.fill(pilot)

    def _pilot_row(self, pilot: PilotSession, state: str) -> tuple[Any, ...]:
        cache = [list(c) for c in sorted(pilot.cache)]
        return (pilot.id, pilot.host, pilot.slots, state, cache, pilot.registered_at, time.time())

    def _pilot_disconnected(self, pilot: PilotSession) -> None:
        if pilot.disconnected_at is None:
            pilot.disconnected_at = time.monotonic()
        pilot.channel = None

    def pilot_connection_closed(self, pilot: PilotSession, channel: Any) -> None:
        if pilot.channel is channel:
            self._pilot_disconnected(pilot)

    def _pilot_lost(self, pilot: PilotSession, why: str) -> None:
        log.warning("pilot lost", pilot=pilot.id, reason=why, jobs=len(pilot.running))
        self.metrics.pilots_lost.inc()
        if pilot.channel is not None:
            # A pilot that was only stalled must notice: it reconnects and registers afresh,
            # and the results of the attempts retried meanwhile are fenced by attempt.
            pilot.channel.abort()
        pilot.channel = None
        pilot.disconnected_at = None
        jobs = list(pilot.running.values())
        pilot.running.clear()
        pilot.assigned = 0
        pilot.cache.clear()
        del self.pilots.pilots[pilot.id]
        self.writer.pilot(self._pilot_row(pilot, "lost"))
        for job in jobs:
            self._lost(job, f"pilot {pilot.id} lost ({why})")

    def _lost(self, job: Job, why: str) -> None:
        if job.terminal or job.state not in ON_PILOT:
            return
        job.error = why
        self._retry_or_fail(job)

    # ---- completion -------------------------------------------------------------------------

    def _complete(self, job: Job, status: JobState, *, after: Any = None) -> None:
        assert status in TERMINAL
        job.state = status
        job.completed = time.time()
        visit = job.visit
        visit.open_jobs -= 1
        if job.pilot_id is not None:
            pilot = self.pilots.pilots.get(job.pilot_id)
            if pilot is not None:
                pilot.running.pop(job.id, None)
                pilot.assigned = max(0, pilot.assigned - 1)
        if job.finished is not None and job.image_arrived is not None:
            self.metrics.end_to_end.observe(max(0.0, job.finished - job.image_arrived))
        self.metrics.jobs_by[status.value].inc()
        context = {
            "group": visit.nv.group_id, "instrument": visit.nv.instrument,
            "detector": job.detector, "job": job.id, "attempt": job.attempt, "pilot": job.pilot_id,
            "status": status.value,
        }  # fmt: skip
        if status in (JobState.FAILED, JobState.LATE, JobState.EXPIRED):
            log.warning("job " + status.value, error=job.error, **context)
        else:
            log.debug("job " + status.value, **context)
        if status in (JobState.FAILED, JobState.LATE, JobState.EXPIRED):
            self.problems.append(
                {"job": job.id, "group": visit.nv.group_id, "detector": job.detector,
                 "status": status.value, "attempt": job.attempt, "pilot": job.pilot_id,
                 "error": job.error, "at": job.completed}
            )  # fmt: skip
        value = encode_completion(self.completion_codec, job)
        self.writer.job(job, completion=value, after=after)
        if visit.open_jobs <= 0:
            self._visit_done(visit)

    def _visit_done(self, visit: Visit) -> None:
        status = "done"
        if all(j.state is JobState.CANCELED for j in visit.jobs.values()):
            status = "canceled"
        self.writer.visit_status(visit.id, status)
        latencies = sorted(
            j.finished - j.image_arrived
            for j in visit.jobs.values()
            if j.finished is not None and j.image_arrived is not None
        )
        self.recent.appendleft(
            {
                "group": visit.nv.group_id,
                "instrument": visit.nv.instrument,
                "task": visit.task.name,
                "status": status,
                "filter": visit.nv.filters,
                "counts": dict(Counter(j.state.value for j in visit.jobs.values())),
                "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
                if latencies
                else None,
                "detectors": {j.detector: j.state.value for j in visit.jobs.values()},
                "done_at": time.time(),
            }
        )
        self.visits.pop(visit.key, None)
        self._close_key(visit.key, status)
        for job in visit.jobs.values():
            self.jobs.pop(job.id, None)
        # Job -> Visit -> jobs -> Job is a reference cycle: break it so reference counting frees
        # the visit at once instead of a full garbage collection later, mid-burst.
        visit.jobs.clear()
        log.info("visit complete", group=visit.nv.group_id, status=status,
                 jobs=len(visit.jobs))  # fmt: skip

    # ---- periodic ---------------------------------------------------------------------------

    def sweep(self, now: float | None = None, *, images_read: bool = True) -> None:
        """Expire visits whose images never came, declare silent pilots lost, drop stale held
        images, and hand ready jobs to pilots with room.

        ``images_read``: the image intake has read everything the broker holds. Only then can
        an image be said never to have arrived: after an outage the images of a visit may
        wait, unread, in the topic past its expiry time."""
        wall = time.time() if now is None else now
        mono = time.monotonic()
        timeout = self.config.heartbeat_timeout_s
        for pilot in list(self.pilots.pilots.values()):
            if pilot.connected and mono - pilot.last_seen > timeout:
                self._pilot_lost(pilot, f"no heartbeat for {timeout:.1f} s")
            elif (
                not pilot.connected
                and pilot.disconnected_at is not None
                and mono - pilot.disconnected_at > timeout
            ):
                self._pilot_lost(pilot, f"did not reconnect within {timeout:.1f} s")
        while images_read and self._expiry and self._expiry[0][0] <= wall:
            _, _, key = heapq.heappop(self._expiry)
            visit = self.visits.get(key)
            if visit is None:
                continue
            for job in list(visit.jobs.values()):
                if job.state in WAITING_FOR_IMAGE:
                    got = job.snaps_mask.bit_count()
                    job.error = f"image never arrived ({got}/{visit.snaps_expected} snaps)"
                    self._complete(job, JobState.EXPIRED)
        for key in list(self.held.expired(wall)):
            self._drop_held(key, "next_visit_never_came")
        limit = wall - self.config.held_ttl_s
        while self.canceled_groups and next(iter(self.canceled_groups.values())) < limit:
            self.canceled_groups.popitem(last=False)
        if self.warm and self._ready:
            for pilot in self.pilots.pilots.values():
                if pilot.free > 0 and pilot.connected:
                    self.fill(pilot)

    def in_flight_on_pilots(self) -> int:
        return sum(len(p.running) for p in self.pilots.pilots.values())
