"""One write-behind transaction's worth of changes, and the SQL that stores each kind.

The state writer (``writer.py``) gathers changes into a ``Batch`` on the hot path and commits
a batch as one transaction; every statement is idempotent (an update by key, an insert that
does nothing if the row is there), so a batch retried after an ambiguous failure is harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prompt.bounds import bound_error
from prompt.dispatcher.engine.model import Job, VisitKey

JOB_UPDATE = """
UPDATE jobs SET state = $2, attempt = $3, pilot_id = $4, image_uri = $5, snaps_mask = $6,
    cache_hit = $7, error = $8, deadline = $9, image_arrived_at = $10, image_consumed_at = $11,
    dispatched_at = $12, started_at = $13, finished_at = $14, completed_at = $15, result = $16,
    snap_uris = $17, snap_obs_ids = $18, failure = $19
WHERE id = $1"""
OUTBOX_INSERT = """INSERT INTO completion_outbox (job_id, value, created_at) VALUES ($1, $2, $3)
ON CONFLICT (job_id) DO NOTHING"""
HELD_INSERT = """INSERT INTO held_images (instrument, group_id, detector, snap, uri, event_time,
    consumed_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"""
HELD_DELETE = "DELETE FROM held_images WHERE instrument = $1 AND group_id = $2"
VISIT_STATUS = "UPDATE visits SET status = $2 WHERE id = $1 AND status = 'active'"
VISIT_RESURRECTED = "UPDATE visits SET resurrected_at = $2 WHERE id = $1"
PILOT_UPSERT = """INSERT INTO pilots (id, host, slots, state, cache_summary, registered_at,
    last_seen) VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host,
    slots = EXCLUDED.slots, state = EXCLUDED.state, cache_summary = EXCLUDED.cache_summary,
    last_seen = EXCLUDED.last_seen"""
OFFSET_RESET = """INSERT INTO consumer_offsets (consumer, topic, partition, next_offset)
VALUES ($1, $2, $3, $4) ON CONFLICT (consumer, topic, partition) DO UPDATE
SET next_offset = EXCLUDED.next_offset"""
OFFSET_UPSERT = """INSERT INTO consumer_offsets (consumer, topic, partition, next_offset)
VALUES ($1, $2, $3, $4) ON CONFLICT (consumer, topic, partition) DO UPDATE
SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset)"""


def _by_snap(values: dict[int, str]) -> list[str | None]:
    if not values:
        return []
    return [values.get(i) for i in range(max(values) + 1)]


def job_row(job: Job) -> tuple[Any, ...]:
    return (
        job.id, job.state.value, job.attempt, job.pilot_id, job.image_uri, job.snaps_mask,
        job.cache_hit, job.error, job.deadline, job.image_arrived, job.image_consumed,
        job.dispatched, job.started, job.finished, job.completed, job.result,
        _by_snap(job.snap_uris), _by_snap(job.snap_obs_ids),
        job.failure.value if job.failure else None,
    )  # fmt: skip


def storable_job_row(row: tuple[Any, ...], refusal: BaseException) -> tuple[Any, ...]:
    """The row of a job whose full row the database refused: its state and times, without
    the payload result, with the refusal as the error."""
    fixed = list(row)
    fixed[7] = bound_error(f"{row[7] or ''} [state not storable as sent: {refusal}]".strip())
    fixed[15] = None
    return tuple(fixed)


@dataclass
class Batch:
    jobs: dict[int, Job] = field(default_factory=dict)
    outbox: dict[int, bytes] = field(default_factory=dict)
    held: list[tuple[Any, ...]] = field(default_factory=list)
    held_done: set[VisitKey] = field(default_factory=set)
    visits: dict[int, str] = field(default_factory=dict)
    resurrected: dict[int, float] = field(default_factory=dict)
    pilots: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    offset_resets: dict[tuple[str, int], int] = field(default_factory=dict)
    after: list[Callable[[], None]] = field(default_factory=list)
    job_rows: list[tuple[Any, ...]] = field(default_factory=list)
    """The jobs' rows as they were when the batch was taken (``snapshot``)."""

    def snapshot(self) -> None:
        """Fix the jobs' rows now. ``jobs`` holds the engine's live objects, which go on
        changing while the transaction awaits its connection: a row read then could say
        ``finished`` while that job's completion and acknowledgement were recorded into the
        next batch, and a commit of this batch alone (the next one failing) would store a
        finished job without its outbox row, a completion lost. Taken synchronously with the
        batch, a row and its completion are always in the same batch."""
        self.job_rows = [job_row(job) for job in self.jobs.values()]

    def empty(self) -> bool:
        return not (
            self.jobs or self.outbox or self.held or self.held_done or self.visits
            or self.pilots or self.offsets or self.offset_resets or self.after
            or self.resurrected
        )  # fmt: skip

    def merge_newer(self, newer: Batch) -> Batch:
        """This (failed) batch with a newer one applied on top, for the retry (snapshot it
        again)."""
        self.jobs.update(newer.jobs)
        self.outbox.update(newer.outbox)
        self.held.extend(newer.held)
        self.held_done |= newer.held_done
        self.visits.update(newer.visits)
        self.resurrected.update(newer.resurrected)
        self.pilots.update(newer.pilots)
        for key, off in newer.offsets.items():
            self.offsets[key] = max(off, self.offsets.get(key, 0))
        for key, off in newer.offset_resets.items():
            self.offset_resets[key] = off
            self.offsets[key] = newer.offsets.get(key, off)
        self.after.extend(newer.after)
        return self
