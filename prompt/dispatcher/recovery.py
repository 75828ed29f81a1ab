"""Rebuild the dispatcher's memory from PostgreSQL at start-up: the committed state is the truth,
and the consumers resume from the offsets stored with it."""

from __future__ import annotations

import heapq
import time
from typing import Any

import asyncpg
import structlog

from prompt.dispatcher.core import CLOSED_MEMORY, Dispatcher
from prompt.dispatcher.model import ON_PILOT, Job, JobState, Visit
from prompt.dispatcher.pilots import PilotSession
from prompt.events import EventError, ImageArrival, limits
from prompt.tasks import Task, load_task

log = structlog.get_logger(__name__)


def _by_snap(values: list[str | None] | None) -> dict[int, str]:
    return {snap: v for snap, v in enumerate(values or []) if v is not None}


def _job(row: asyncpg.Record, visit: Visit) -> Job:
    return Job(
        id=row["id"],
        visit=visit,
        detector=row["detector"],
        max_attempts=row["max_attempts"],
        state=JobState(row["state"]),
        attempt=row["attempt"],
        pilot_id=row["pilot_id"],
        snaps_mask=row["snaps_mask"],
        snap_uris=_by_snap(row["snap_uris"]),
        snap_obs_ids=_by_snap(row["snap_obs_ids"]),
        cache_hit=row["cache_hit"],
        error=row["error"],
        deadline=row["deadline"],
        image_arrived=row["image_arrived_at"],
        image_consumed=row["image_consumed_at"],
        dispatched=row["dispatched_at"],
        started=row["started_at"],
        finished=row["finished_at"],
        completed=row["completed_at"],
        result=row["result"],
    )


async def recover_state(d: Dispatcher, conn: asyncpg.Connection) -> dict[str, Any]:
    tasks: dict[int, Task] = {t.id: t for t in d.tasks}
    pilot_rows = {r["id"]: r for r in await conn.fetch("SELECT id, host, slots FROM pilots")}
    visits = await conn.fetch(
        "SELECT * FROM visits WHERE status = 'active' AND instrument <> '*' ORDER BY id"
    )
    by_id: dict[int, Visit] = {}
    for row in visits:
        task = tasks.get(row["task_id"]) or await load_task(conn, row["task_id"])
        if task is None:
            continue
        tasks[task.id] = task
        try:
            nv = limits.next_visit(row["next_visit"])
        except (EventError, KeyError, TypeError) as exc:
            # Stored before records were checked: keep it out of memory rather than crash
            # every restart on it.
            log.error("visit left out of recovery: its stored next-visit is unusable",
                      visit=row["id"], group=row["group_id"][:128], error=str(exc))  # fmt: skip
            d.writer.visit_status(row["id"], "ignored")
            continue
        by_id[row["id"]] = Visit(row["id"], nv, task, row["received_at"], row["expires_at"])
    jobs = await conn.fetch(
        "SELECT * FROM jobs WHERE visit_id = ANY($1::bigint[]) ORDER BY id", list(by_id)
    )
    jobs = [row for row in jobs if row["visit_id"] in by_id]
    mono = time.monotonic()
    on_pilots = ready = 0
    for row in jobs:
        visit = by_id[row["visit_id"]]
        job = _job(row, visit)
        visit.jobs[job.detector] = job
        if job.terminal:
            continue
        visit.open_jobs += 1
        d.jobs[job.id] = job
        if job.state in ON_PILOT and job.pilot_id:
            # Its pilot gets until the heartbeat timeout to reconnect and claim it.
            pilot = d.pilots.pilots.get(job.pilot_id)
            if pilot is None:
                prow = pilot_rows.get(job.pilot_id)
                pilot = PilotSession(
                    id=job.pilot_id,
                    slots=prow["slots"] if prow else 1,
                    labels=frozenset(),
                    host=prow["host"] if prow else "",
                    channel=None,
                    disconnected_at=mono,
                )
                d.pilots.pilots[pilot.id] = pilot
            pilot.running[job.id] = job
            job.tried.add(pilot.id)
            on_pilots += 1
        elif job.state is JobState.READY:
            assert job.deadline is not None
            heapq.heappush(d._ready, (job.deadline, next(d._seq), job))
            ready += 1
    for visit in by_id.values():
        if visit.open_jobs == 0:
            d.writer.visit_status(visit.id, "done")
            d._close_key(visit.key, "done")
            continue
        d.visits[visit.key] = visit
        heapq.heappush(d._expiry, (visit.expires_at, next(d._seq), visit.key))
    closed = await conn.fetch(
        "SELECT instrument, group_id, status, received_at FROM visits WHERE status <> 'active'"
        " ORDER BY id DESC LIMIT $1",
        CLOSED_MEMORY,
    )
    for row in reversed(closed):
        if row["instrument"] == "*":
            d._remember_canceled(row["group_id"], row["received_at"])
        else:
            d._close_key((row["instrument"], row["group_id"]), row["status"])
    held = await conn.fetch("SELECT * FROM held_images ORDER BY consumed_at")
    for row in held:
        arrival = ImageArrival(
            row["instrument"], row["group_id"], row["snap"], row["detector"], row["uri"],
            event_time=row["event_time"],
        )  # fmt: skip
        try:
            d.on_image(limits.image_arrival(arrival), row["consumed_at"])
        except EventError as exc:
            log.error("held image left out of recovery", group=row["group_id"][:128],
                      detector=row["detector"], error=str(exc))  # fmt: skip
    # Rows whose visit exists by now (written behind after its resurrection) were just applied
    # or recognised as duplicates; keep only those still waiting for their next-visit.
    waiting = d.held.keys()
    async with d.fence.transaction(d.pool) as tx:
        await tx.execute(
            """DELETE FROM held_images h WHERE NOT EXISTS (
                   SELECT 1 FROM unnest($1::text[], $2::text[]) AS w(instrument, group_id)
                   WHERE w.instrument = h.instrument AND w.group_id = h.group_id)""",
            [k[0] for k in waiting],
            [k[1] for k in waiting],
        )
    summary = {
        "visits": len(d.visits),
        "open_jobs": len(d.jobs),
        "on_pilots": on_pilots,
        "ready": ready,
        "held_images": len(held),
        "closed_visits": len(closed),
    }
    log.info("state recovered", **summary)
    return summary
