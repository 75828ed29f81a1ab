"""Handing jobs to pilots: the job frame, the push, the affinity rule, the backlog.

A ready job waits in the queue of the pilot that preloaded it (``queues.py``). A pilot with
room takes from its own queue and the unassigned one, best first in the order chosen at
start-up; only a pilot with an idle worker and nothing of its own left takes another's job
(work stealing at the tail), and only when that pilot would keep it waiting past
``affinity_wait_s``, or is gone or draining. Room is the pilot's slots plus a small backlog
that it starts the moment a worker frees; a backlogged job can be asked back (``withdraw``)
for a pilot that would otherwise idle, or to cancel it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from prompt.channel import frames
from prompt.channel.frames import FrameTooLargeError
from prompt.channel.messages import JobMessage, Withdraw
from prompt.dispatcher.engine.book import Desk
from prompt.dispatcher.engine.effects import SaveJob, Send
from prompt.dispatcher.engine.model import Job, JobState
from prompt.dispatcher.engine.outcomes import FailureKind
from prompt.dispatcher.engine.pilots import PilotState
from prompt.dispatcher.engine.queues import UNASSIGNED, Rank
from prompt.instruments import detector_name
from prompt.tasks import Task

Fail = Callable[[Job, FailureKind, str], None]


class Dispatch(Desk):
    fail: Fail
    """Set by the engine: ends a job that cannot run (see ``lifecycle.py``)."""
    backlog: int = 0
    """Set by the scheduling: jobs a pilot may queue beyond its slots, at most."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._payloads: dict[int, dict[str, Any]] = {}
        self._labels: dict[int, frozenset[str]] = {}

    def labels(self, task: Task) -> frozenset[str]:
        self.payload(task)
        return self._labels[task.id]

    def payload(self, task: Task) -> dict[str, Any]:
        """The task's payload as sent to pilots, built once per task."""
        payload = self._payloads.get(task.id)
        if payload is None:
            payload = task.spec.payload.model_dump(mode="json")
            self._payloads[task.id] = payload
            self._labels[task.id] = frozenset(task.spec.requirements.labels)
        return payload

    def fields(self, job: Job) -> dict[str, Any]:
        """What a payload is told about its job (argv templates format these)."""
        visit = job.visit
        base = visit.base_fields
        if not base:
            nv = visit.nv
            base.update(
                instrument=nv.instrument, group=nv.group_id, filter=nv.filters,
                band=nv.filters.split("_", 1)[0], day_obs=visit.day_obs,
                nimages=visit.snaps_expected, ra=nv.position[0], dec=nv.position[1],
                rotation=nv.camera_angle, survey=nv.survey, task=visit.task.name,
            )  # fmt: skip
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

    def push(self, job: Job, pilot: PilotState) -> None:
        """Send the job to the pilot now (it has room: a free slot or its backlog)."""
        if job.attempt > job.withdrawals:
            self.book.counts["retries"] += 1
            self.metrics.retries.inc()
        job.attempt += 1
        message: JobMessage = {
            "t": "job", "job": job.id, "attempt": job.attempt,
            "payload": self.payload(job.visit.task), "fields": self.fields(job),
            "timeout_s": job.visit.task.spec.job_timeout_s, "deadline": job.deadline,
            "rank": self.book.queues.order.key(job),
        }  # fmt: skip
        try:
            frame = frames.encode(message)
        except FrameTooLargeError as exc:  # every pilot would refuse it: fail now, with why
            self.fail(job, FailureKind.UNSENDABLE, f"the job cannot be sent: {exc}")
            return
        if job.pilot_id != pilot.id:
            self.book.pilots.reassign(job, pilot)
        job.state = JobState.SENT
        job.pilot_id = pilot.id
        job.tried.add(pilot.id)
        job.dispatched = self.wall()
        job.started = None
        pilot.running[job.id] = job
        self.out.append(Send(pilot.id, frame))
        self.out.append(SaveJob(job))

    def withdraw(self, job: Job, to: str | None) -> None:
        """Ask the job's pilot to give it back if it has not started it: for pilot ``to``, or
        (None) to cancel it. The pilot answers ``withdrawn`` (see ``PilotEvents.withdrawn``)."""
        assert job.pilot_id is not None
        self.book.withdrawing[job.id] = to
        message: Withdraw = {"t": "withdraw", "job": job.id, "attempt": job.attempt}
        self.out.append(Send(job.pilot_id, frames.encode(message)))

    def place(self, job: Job) -> None:
        """A ready job: into its holder's queue if the holder takes work, else the unassigned
        one; then to a pilot with room, or an idle one that may take it."""
        holder = self._holder(job)
        if holder is not None and holder.free > 0 and not self.book.queues:
            self.push(job, holder)  # nothing waits: no order to keep (the common case)
            return
        self.book.queues.add(job, holder.id if holder is not None else UNASSIGNED)
        if holder is None:
            holder = self.book.pilots.choose_for_run(
                job, self.labels(job.visit.task), backlog=self.backlog
            )
        if holder is not None:
            self.fill(holder)
        if job.state is JobState.READY:
            for pilot in self.book.pilots.pilots.values():
                if pilot.free > 0 and pilot is not holder:
                    self.fill(pilot)
                    if job.state is not JobState.READY:
                        break

    def fill_all(self) -> None:
        for pilot in self.book.pilots.pilots.values():
            if pilot.free > 0 or (self.book.queues and pilot.free + self._depth(pilot) > 0):
                self.fill(pilot)

    def fill(self, pilot: PilotState) -> None:
        """Give a pilot with room the best jobs it may take (see the module's docstring)."""
        if not pilot.accepts(pilot.labels):
            return
        queues = self.book.queues
        now = self.wall()
        typical = queues.order.runtimes.typical() or 0.0
        depth = self._depth(pilot)
        while pilot.free + depth > 0:
            ahead = max(0, len(pilot.running) + 1 - pilot.slots)
            start_at = now + ahead / pilot.slots * typical
            found = self._best(self._sources(pilot), pilot, start_at)
            if found is None and pilot.free > 0:
                found = self._best(self._slow_holders(pilot, now), pilot, start_at)
            if found is None:
                if pilot.free > 0:
                    self._take_back_for(pilot, now)
                return
            queues.discard(found)
            self.push(found, pilot)

    def _depth(self, pilot: PilotState) -> int:
        """The backlog the pilot may hold beyond its slots: the cap, or less when the jobs'
        recent run time says fewer cover ``backlog_cover_s`` (one per slot until known)."""
        typical = self.book.queues.order.runtimes.typical()
        if not self.backlog or typical is None:
            return min(self.backlog, pilot.slots)
        if typical > 0:
            return min(self.backlog, math.ceil(pilot.slots * self.config.backlog_cover_s / typical))
        return self.backlog

    def _holder(self, job: Job) -> PilotState | None:
        """The pilot that preloaded the job, if it takes work and has not tried the job."""
        holder = self.book.pilots.pilots.get(job.pilot_id) if job.pilot_id else None
        if (
            holder is None
            or holder.id in job.tried
            or not holder.accepts(self.labels(job.visit.task))
        ):
            return None
        return holder

    def _sources(self, pilot: PilotState) -> list[str]:
        """The pilot's own queue, the unassigned one, and those of pilots that take no work."""
        pilots = self.book.pilots.pilots
        names = [pilot.id, UNASSIGNED]
        for name in self.book.queues.names():
            if name not in (pilot.id, UNASSIGNED):
                holder = pilots.get(name)
                if holder is None or not holder.accepts(holder.labels):
                    names.append(name)
        return names

    def _slow_holders(self, pilot: PilotState, now: float) -> list[str]:
        """Queues of other pilots whose head has waited, or whose holder will keep the job at
        its tail waiting, past affinity_wait_s: an idle pilot may take their jobs."""
        queues = self.book.queues
        pilots = self.book.pilots.pilots
        typical = queues.order.runtimes.typical() or 0.0
        names = []
        for name in queues.names():
            holder = pilots.get(name)
            if holder is None or holder is pilot or not queues.length(name):
                continue
            behind = max(0, len(holder.running) - holder.slots) + queues.length(name)
            head = queues.head(name, now, lambda _job: True)
            if head is not None and self._too_long(head[1], holder, behind, now, typical):
                names.append(name)
        return names

    def _too_long(
        self, job: Job, holder: PilotState, behind: int, now: float, typical: float
    ) -> bool:
        waited = now - (job.image_consumed or now)
        return waited + behind / holder.slots * typical >= self.config.affinity_wait_s

    def _best(self, names: list[str], pilot: PilotState, start_at: float) -> Job | None:
        queues = self.book.queues
        best: tuple[Rank, Job] | None = None

        def accepts(job: Job) -> bool:
            return self.labels(job.visit.task) <= pilot.labels

        for name in names:
            head = queues.head(name, start_at, accepts)
            if head is not None and (best is None or head[0] < best[0]):
                best = head
        return None if best is None else best[1]

    def _take_back_for(self, pilot: PilotState, now: float) -> None:
        """An idle pilot and no queued job it may take: ask back jobs waiting in other pilots'
        backlogs that would wait there past affinity_wait_s (or whose pilot is draining), the
        last each would start first."""
        withdrawing = self.book.withdrawing
        wanted = pilot.free - sum(1 for to in withdrawing.values() if to == pilot.id)
        typical = self.book.queues.order.runtimes.typical() or 0.0
        key = self.book.queues.order.key
        for other in self.book.pilots.pilots.values():
            queued = len(other.running) - other.slots
            if wanted <= 0:
                return
            if other is pilot or not other.connected or queued <= 0:
                continue
            waiting = [
                job for job in other.running.values()
                if job.state is JobState.SENT and job.id not in withdrawing
                and self.labels(job.visit.task) <= pilot.labels
            ]  # fmt: skip
            waiting.sort(key=key, reverse=True)
            for job in waiting[: min(wanted, queued)]:
                if other.draining or self._too_long(job, other, queued, now, typical):
                    self.withdraw(job, pilot.id)
                    wanted -= 1
