"""How jobs end: finished, late, failed (at once, or after the retries its failure kind
allows), expired, canceled — each with exactly one completion event — and visits with them."""

from __future__ import annotations

import heapq
from collections import Counter
from typing import Any

import structlog

from prompt.dispatcher.engine.book import Desk
from prompt.dispatcher.engine.completion import encode_completion
from prompt.dispatcher.engine.effects import SaveJob, SaveVisitStatus, Send
from prompt.dispatcher.engine.model import (
    ON_PILOT,
    TERMINAL,
    WAITING_FOR_IMAGE,
    Job,
    JobState,
    Visit,
)
from prompt.dispatcher.engine.outcomes import FailureKind
from prompt.dispatcher.engine.scheduling import Scheduling
from prompt.events import AvroCodec

log = structlog.get_logger(__name__)

_NOTED = frozenset({JobState.FAILED, JobState.LATE, JobState.EXPIRED})


class Lifecycle(Desk):
    scheduling: Scheduling
    codec: AvroCodec
    """Set by the engine."""

    def complete(self, job: Job, status: JobState, *, then: Send | None = None) -> None:
        assert status in TERMINAL
        job.state = status
        job.completed = self.wall()
        self.book.queues.discard(job)
        self.book.withdrawing.pop(job.id, None)
        visit = job.visit
        visit.open_jobs -= 1
        if job.pilot_id is not None:
            pilot = self.book.pilots.pilots.get(job.pilot_id)
            if pilot is not None:
                pilot.running.pop(job.id, None)
                pilot.assigned = max(0, pilot.assigned - 1)
        if job.finished is not None and job.image_arrived is not None:
            self.metrics.end_to_end.observe(max(0.0, job.finished - job.image_arrived))
        self.metrics.jobs_by[status.value].inc()
        if status is JobState.FAILED:
            self.metrics.failures.labels((job.failure or FailureKind.PAYLOAD_ERROR).value).inc()
        context: dict[str, Any] = {
            "group": visit.nv.group_id, "instrument": visit.nv.instrument,
            "detector": job.detector, "job": job.id, "attempt": job.attempt, "pilot": job.pilot_id,
            "status": status.value, "failure": job.failure.value if job.failure else None,
        }  # fmt: skip
        if status in _NOTED:
            log.warning("job " + status.value, error=job.error, **context)
            self.book.problems.append({**context, "error": job.error, "at": job.completed})
        else:
            log.debug("job " + status.value, **context)
        self.out.append(SaveJob(job, encode_completion(self.codec, job), then))
        if visit.open_jobs <= 0:
            self._visit_done(visit)

    def failed_attempt(
        self, job: Job, kind: FailureKind, error: str, *, then: Send | None = None
    ) -> None:
        """An attempt failed: retried if its kind allows and attempts and budget remain. A lost
        pilot (killed, or a failover lost the push) is the service's fault, not the job's: its
        job runs again even past its deadline, and is reported late rather than failed."""
        job.error, job.failure = error, kind
        self.book.withdrawing.pop(job.id, None)
        tries = job.attempt - job.withdrawals
        budget_left = (
            kind is FailureKind.PILOT_LOST or job.deadline is None or self.wall() < job.deadline
        )
        if kind.retriable and tries < job.max_attempts and budget_left:
            log.info(
                "job retried", group=job.visit.nv.group_id, detector=job.detector, job=job.id,
                attempt=job.attempt, failure=kind.value, error=error,
            )  # fmt: skip
            job.state = JobState.READY
            self.out.append(SaveJob(job, None, then))
            self.scheduling.ready(job)
            return
        if kind.retriable and not budget_left and tries < job.max_attempts:
            job.error = f"{error}; no budget left to retry"
        self.complete(job, JobState.FAILED, then=then)

    def fail_now(self, job: Job, kind: FailureKind, error: str) -> None:
        """A job that cannot run at all (it never reached a pilot)."""
        job.error, job.failure = error, kind
        self.complete(job, JobState.FAILED)

    def lost(self, job: Job, why: str) -> None:
        if job.terminal or job.state not in ON_PILOT:
            return
        if job.id in self.book.withdrawing and self.book.withdrawing[job.id] is None:
            self.cancel(job)  # it was being asked back to cancel it: it will not run now
            return
        self.failed_attempt(job, FailureKind.PILOT_LOST, why)

    def cancel(self, job: Job) -> None:
        job.error = "visit canceled"
        self.complete(job, JobState.CANCELED)

    def expire(self, now: float) -> None:
        """Visits past their expiry: jobs still waiting for images end ``expired``."""
        expiry = self.book.expiry
        while expiry and expiry[0][0] <= now:
            _, _, key = heapq.heappop(expiry)
            visit = self.book.visits.get(key)
            if visit is None:
                continue
            for job in list(visit.jobs.values()):
                if job.state in WAITING_FOR_IMAGE:
                    got = job.snaps_mask.bit_count()
                    job.error = f"image never arrived ({got}/{visit.snaps_expected} snaps)"
                    self.complete(job, JobState.EXPIRED)

    def _visit_done(self, visit: Visit) -> None:
        jobs = visit.jobs.values()
        status = "canceled" if all(j.state is JobState.CANCELED for j in jobs) else "done"
        self.out.append(SaveVisitStatus(visit.id, status))
        latencies = sorted(
            j.finished - j.image_arrived
            for j in jobs
            if j.finished is not None and j.image_arrived is not None
        )
        self.book.recent.appendleft(
            {
                "group": visit.nv.group_id,
                "instrument": visit.nv.instrument,
                "task": visit.task.name,
                "status": status,
                "filter": visit.nv.filters,
                "counts": dict(Counter(j.state.value for j in jobs)),
                "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
                if latencies
                else None,
                "detectors": {j.detector: j.state.value for j in jobs},
                "done_at": self.wall(),
            }
        )
        self.book.visits.pop(visit.key, None)
        self.book.close(visit.key, status)
        for job in jobs:
            self.book.jobs.pop(job.id, None)
        # Job -> Visit -> jobs -> Job is a reference cycle: break it so reference counting frees
        # the visit at once instead of a full garbage collection later, mid-burst.
        count = len(visit.jobs)
        visit.jobs.clear()
        log.info("visit complete", group=visit.nv.group_id, status=status, jobs=count)
