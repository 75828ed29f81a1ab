"""Handing jobs to pilots: the job frame, the push, the ready queue, the affinity rule."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from prompt.channel import frames
from prompt.channel.frames import FrameTooLargeError
from prompt.channel.messages import JobMessage
from prompt.dispatcher.engine.book import Desk
from prompt.dispatcher.engine.effects import SaveJob, Send
from prompt.dispatcher.engine.model import Job, JobState
from prompt.dispatcher.engine.outcomes import FailureKind
from prompt.dispatcher.engine.pilots import PilotState
from prompt.instruments import detector_name
from prompt.tasks import Task

Fail = Callable[[Job, FailureKind, str], None]


class Dispatch(Desk):
    fail: Fail
    """Set by the engine: ends a job that cannot run (see ``lifecycle.py``)."""

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
        """Send the job to the pilot now (it has a free slot)."""
        if job.attempt:
            self.book.counts["retries"] += 1
            self.metrics.retries.inc()
        job.attempt += 1
        message: JobMessage = {
            "t": "job", "job": job.id, "attempt": job.attempt,
            "payload": self.payload(job.visit.task), "fields": self.fields(job),
            "timeout_s": job.visit.task.spec.job_timeout_s, "deadline": job.deadline,
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

    def fill(self, pilot: PilotState) -> None:
        """Give a pilot with free slots the ready jobs with the earliest deadlines. A job whose
        calibrations another pilot holds waits for that pilot up to affinity_wait_s."""
        ready = self.book.ready
        skipped: list[tuple[float, int, Job]] = []
        now = self.wall()
        while pilot.free > 0 and ready and pilot.accepts(pilot.labels):
            entry = heapq.heappop(ready)
            job = entry[2]
            if job.state is not JobState.READY:
                continue
            if not pilot.accepts(self.labels(job.visit.task)) or self._wait_for_holder(
                job, pilot, now
            ):
                skipped.append(entry)
                continue
            self.push(job, pilot)
        for entry in skipped:
            heapq.heappush(ready, entry)

    def fill_all(self) -> None:
        if self.book.ready:
            for pilot in self.book.pilots.pilots.values():
                if pilot.free > 0 and pilot.connected:
                    self.fill(pilot)

    def place(self, job: Job) -> None:
        """A ready job: to the pilot the affinity rule picks if one has a slot, else queued."""
        pilot = self.book.pilots.choose_for_run(
            job,
            self.labels(job.visit.task),
            may_leave_cache=not self.worth_waiting_for_holder(job, self.wall()),
        )
        if pilot is None:
            self.book.enqueue(job)
        else:
            self.push(job, pilot)

    def _wait_for_holder(self, job: Job, pilot: PilotState, now: float) -> bool:
        if job.pilot_id == pilot.id or job.cache_key in pilot.cache:
            return False
        return self.worth_waiting_for_holder(job, now)

    def worth_waiting_for_holder(self, job: Job, now: float) -> bool:
        """The one affinity rule, on arrival and when a slot frees: a job waits for the pilot
        holding its calibrations while that pilot is there and affinity_wait_s has not run out."""
        waited = now - (job.image_consumed or now)
        return waited < self.config.affinity_wait_s and self.book.pilots.holder_waiting(job)
