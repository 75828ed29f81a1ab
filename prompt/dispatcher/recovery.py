"""Read what the previous term committed, for the engine to take over (``engine/restore.py``):
the committed state is the truth, and the consumers resume from the offsets stored with it."""

from __future__ import annotations

import asyncpg
import structlog

from prompt.dispatcher.engine import Engine, Job, JobState, SavedState, Visit
from prompt.dispatcher.engine.book import CLOSED_MEMORY
from prompt.dispatcher.engine.outcomes import FailureKind
from prompt.dispatcher.leadership import Fence
from prompt.dispatcher.runtime import Runtime
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
        failure=FailureKind.parse(row["failure"]) if row["failure"] else None,
        deadline=row["deadline"],
        image_arrived=row["image_arrived_at"],
        image_consumed=row["image_consumed_at"],
        dispatched=row["dispatched_at"],
        started=row["started_at"],
        finished=row["finished_at"],
        completed=row["completed_at"],
        result=row["result"],
    )


async def read_state(conn: asyncpg.Connection, tasks: list[Task], runtime: Runtime) -> SavedState:
    saved = SavedState()
    known: dict[int, Task] = {t.id: t for t in tasks}
    pilot_rows = await conn.fetch("SELECT id, host, slots FROM pilots")
    saved.pilots = {r["id"]: (r["host"], r["slots"]) for r in pilot_rows}
    by_id: dict[int, Visit] = {}
    rows = await conn.fetch(
        "SELECT * FROM visits WHERE status = 'active' AND instrument <> '*' ORDER BY id"
    )
    for row in rows:
        task = known.get(row["task_id"]) or await load_task(conn, row["task_id"])
        if task is None:
            continue
        known[task.id] = task
        try:
            nv = limits.next_visit(row["next_visit"])
        except (EventError, KeyError, TypeError) as exc:
            # Stored before records were checked: keep it out of memory rather than crash
            # every restart on it.
            log.error("visit left out of recovery: its stored next-visit is unusable",
                      visit=row["id"], group=row["group_id"][:128], error=str(exc))  # fmt: skip
            runtime.writer.visit_status(row["id"], "ignored")
            continue
        by_id[row["id"]] = Visit(row["id"], nv, task, row["received_at"], row["expires_at"])
    jobs = await conn.fetch(
        "SELECT * FROM jobs WHERE visit_id = ANY($1::bigint[]) ORDER BY id", list(by_id)
    )
    for row in jobs:
        visit = by_id[row["visit_id"]]
        job = _job(row, visit)
        visit.jobs[job.detector] = job
    saved.visits = list(by_id.values())
    closed = await conn.fetch(
        "SELECT instrument, group_id, status, received_at FROM visits WHERE status <> 'active'"
        " ORDER BY id DESC LIMIT $1",
        CLOSED_MEMORY,
    )
    for row in reversed(closed):
        if row["instrument"] == "*":
            saved.canceled.append((row["group_id"], row["received_at"]))
        else:
            saved.closed.append(((row["instrument"], row["group_id"]), row["status"]))
    for row in await conn.fetch("SELECT * FROM held_images ORDER BY consumed_at"):
        arrival = ImageArrival(
            row["instrument"], row["group_id"], row["snap"], row["detector"], row["uri"],
            event_time=row["event_time"],
        )  # fmt: skip
        try:
            saved.held.append((limits.image_arrival(arrival), row["consumed_at"]))
        except EventError as exc:
            log.error("held image left out of recovery", group=row["group_id"][:128],
                      detector=row["detector"], error=str(exc))  # fmt: skip
    return saved


async def recover(runtime: Runtime, conn: asyncpg.Connection, fence: Fence) -> None:
    """Restore the engine from the database, then drop held-image rows whose visit exists by
    now (written behind after its resurrection: just applied, or seen as duplicates)."""
    engine: Engine = runtime.engine
    saved = await read_state(conn, engine.tasks, runtime)
    runtime.apply(engine.restore(saved))
    waiting = engine.held_groups()
    async with fence.transaction(runtime.pool) as tx:
        await tx.execute(
            """DELETE FROM held_images h WHERE NOT EXISTS (
                   SELECT 1 FROM unnest($1::text[], $2::text[]) AS w(instrument, group_id)
                   WHERE w.instrument = h.instrument AND w.group_id = h.group_id)""",
            [k[0] for k in waiting],
            [k[1] for k in waiting],
        )
