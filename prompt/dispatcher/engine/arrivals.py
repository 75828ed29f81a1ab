"""What the observatory says: next-visits, cancels, images — and what each leads to.

Decisions that need the database (resurrecting a task, recording an ignored visit or a cancel
for a group not announced yet) are returned as values for the adapter to carry out; it then
reports the outcome back (``resurrected``, ``ignored``, ``canceled_unannounced``). Everything
else is decided and done in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from prompt.channel import frames
from prompt.dispatcher.engine.book import Announced, Desk
from prompt.dispatcher.engine.dispatch import Dispatch
from prompt.dispatcher.engine.effects import HeldApplied, SaveHeld, SaveJob, Send
from prompt.dispatcher.engine.lifecycle import Lifecycle
from prompt.dispatcher.engine.model import WAITING_FOR_IMAGE, Job, JobState, Visit, VisitKey
from prompt.dispatcher.engine.scheduling import Scheduling
from prompt.events import EventError, ImageArrival, NextVisit
from prompt.tasks import Task, match_task
from prompt.timescale import TAI_MINUS_UTC_S

log = structlog.get_logger(__name__)


class HeldOverflowError(EventError):
    """An image for a group not (yet) announced, beyond what may be held: dead-lettered so
    it can be replayed, instead of growing memory without bound."""

    reason = "held_full"


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Seen before: nothing to do."""


@dataclass(frozen=True, slots=True)
class Noted:
    """Kept until the visit's first image (poll scheduling)."""


@dataclass(frozen=True, slots=True)
class Ignore:
    """Not to be run; record the visit as ignored (or canceled) with the reason."""

    reason: str
    status: str


@dataclass(frozen=True, slots=True)
class Resurrect:
    """Create the visit and one job per detector (one transaction), then call ``resurrected``."""

    task: Task
    expires_at: float


Decision = Duplicate | Noted | Ignore | Resurrect


@dataclass(frozen=True, slots=True)
class BuildFirst:
    """Poll scheduling: resurrect this noted visit now (the adapter reads the task from the
    database, as a system without resurrection would), then hand the image over again."""

    announced: Announced


class Arrivals(Desk):
    scheduling: Scheduling
    dispatch: Dispatch
    lifecycle: Lifecycle
    tasks: list[Task]
    """Set by the engine."""

    # ---- next-visit -------------------------------------------------------------------------

    def announce(
        self, nv: NextVisit, record: dict[str, Any], consumed: float
    ) -> Decision | BuildFirst:
        """With a scheduling that builds visits at their first image, a next-visit whose
        images came first (they are held) is built at once: ``BuildFirst``."""
        key = (nv.instrument, nv.group_id)
        if not nv.instrument:
            return self._ignore("not_observation")
        if self.book.known(key):
            self.duplicate("next-visit")
            return Duplicate()
        if nv.group_id in self.book.canceled:
            return self._ignore("canceled")
        if nv.efd_stamp and consumed - nv.efd_stamp > self.config.stale_after_s:
            return self._ignore("stale")
        if not self.scheduling.resurrects_on_announce:
            noted = self.book.announced[key] = Announced(nv, record, consumed)
            return BuildFirst(noted) if key in self.book.held else Noted()
        return self.decide(nv, consumed, self.tasks)

    def decide(self, nv: NextVisit, consumed: float, tasks: list[Task]) -> Ignore | Resurrect:
        task = match_task(tasks, nv)
        if task is None:
            return self._ignore("no_task")
        expires = nv.start_time - TAI_MINUS_UTC_S if nv.start_time else consumed
        expires += max(nv.duration, 0.0) * 2 + task.spec.image_timeout_s
        self.book.resurrecting.add((nv.instrument, nv.group_id))
        return Resurrect(task, expires)

    def _ignore(self, reason: str) -> Ignore:
        self.metrics.ignored.labels("next-visit", reason).inc()
        return Ignore(reason, "canceled" if reason == "canceled" else "ignored")

    def ignored(self, nv: NextVisit, decision: Ignore) -> None:
        """The ignored visit is recorded."""
        key = (nv.instrument, nv.group_id)
        self.book.announced.pop(key, None)
        self.book.close(key, decision.status)
        self.drop_held(key)
        log.info("visit ignored", group=nv.group_id, instrument=nv.instrument,
                 reason=decision.reason)  # fmt: skip

    def resurrect_failed(self, nv: NextVisit) -> None:
        """The transaction did not commit: the images that came meanwhile stay held."""
        self.book.resurrecting.discard((nv.instrument, nv.group_id))

    def resurrected(
        self,
        nv: NextVisit,
        task: Task,
        visit_id: int | None,
        jobs: list[tuple[int, int]],
        consumed: float,
        expires_at: float,
    ) -> Visit | None:
        """The visit and its jobs ``(id, detector)`` are committed (``visit_id`` None: it
        existed already, made by another instance or an earlier life of this one)."""
        key = (nv.instrument, nv.group_id)
        self.book.resurrecting.discard(key)
        self.book.announced.pop(key, None)
        if visit_id is None:
            self.duplicate("next-visit")
            return None
        visit = Visit(visit_id, nv, task, consumed, expires_at)
        for job_id, detector in jobs:
            job = Job(job_id, visit, detector, task.spec.max_attempts)
            visit.jobs[detector] = job
            self.book.jobs[job_id] = job
        visit.open_jobs = len(jobs)
        self.book.visits[key] = visit
        self.book.watch_expiry(visit)
        if self.scheduling.preloads:
            self._assign_and_preload(visit)
        early = self.book.held.pop(key)
        for arrival, when in early:
            self.apply_image(visit, arrival, when)
        if early:
            self.out.append(HeldApplied(key))
        return visit

    def _assign_and_preload(self, visit: Visit) -> None:
        labels = self.dispatch.labels(visit.task)
        hints: dict[str, list[dict[str, Any]]] = {}
        nv = visit.nv
        valid_until = visit.expires_at + visit.task.spec.deadline_s
        pilots = self.book.pilots
        for job in visit.jobs.values():
            pilot = pilots.choose_for_preload(nv.instrument, job.detector, nv.filters, labels)
            if pilot is None:
                continue
            job.pilot_id = pilot.id
            job.state = JobState.PRELOADING
            pilot.assigned += 1
            hints.setdefault(pilot.id, []).append(
                {"job": job.id, "instrument": nv.instrument, "detector": job.detector,
                 "filter": nv.filters, "day_obs": visit.day_obs, "group": nv.group_id,
                 "ra": nv.position[0], "dec": nv.position[1], "valid_until": valid_until}
            )  # fmt: skip
            self.out.append(SaveJob(job))
        for pilot_id, items in hints.items():
            self.out.append(Send(pilot_id, frames.encode({"t": "preload", "items": items})))

    # ---- cancel -----------------------------------------------------------------------------

    def cancel(self, group: str) -> bool:
        """Cancel the group's jobs not yet on a pilot, and ask back those not started there.
        False: the group has no visit (it is not announced, or only noted) and is not
        remembered as canceled (record it, then call ``canceled_unannounced``)."""
        matched = [v for v in self.book.visits.values() if v.nv.group_id == group]
        for visit in matched:
            n = 0
            asked = 0
            for job in list(visit.jobs.values()):
                if job.state in WAITING_FOR_IMAGE or job.state is JobState.READY:
                    self.lifecycle.cancel(job)
                    n += 1
                elif job.state is JobState.SENT and job.id not in self.book.withdrawing:
                    self.dispatch.withdraw(job, None)  # canceled if it is still queued there
                    asked += 1
            log.info("visit canceled", group=group, canceled_jobs=n, asked_back=asked)
        return bool(matched) or not group or group in self.book.canceled

    def canceled_unannounced(self, group: str, when: float) -> None:
        self.book.remember_canceled(group, when)
        for key in [k for k in self.book.announced if k[1] == group]:
            del self.book.announced[key]  # noted, not built: its first image must not build it
            self.book.close(key, "canceled")
        for key in self.book.held.of_group(group):
            self.drop_held(key)

    # ---- images -----------------------------------------------------------------------------

    def image(self, arrival: ImageArrival, consumed: float) -> BuildFirst | None:
        """Apply an image to its visit, or hold it until the visit exists. Raises
        HeldOverflowError if it can be neither (the caller dead-letters it)."""
        key = (arrival.instrument, arrival.group_id)
        visit = self.book.visits.get(key)
        if visit is not None:
            self.apply_image(visit, arrival, consumed)
            return None
        announced = self.book.announced.get(key)
        if announced is not None:
            return BuildFirst(announced)
        if key in self.book.closed or arrival.group_id in self.book.canceled:
            self.metrics.ignored.labels("image-arrival", "visit_closed").inc()
            return None
        self.hold(arrival, consumed)
        return None

    def hold(self, arrival: ImageArrival, consumed: float) -> None:
        outcome = self.book.held.add(arrival, consumed)
        if outcome == "duplicate":
            self.duplicate("image-arrival")
            return
        if outcome != "held":
            held = self.book.held
            where = "its group holds" if outcome == "group_full" else "all groups hold"
            limit = held.per_group if outcome == "group_full" else held.total
            raise HeldOverflowError(
                f"image for {arrival.group_id!r} detector {arrival.detector} snap {arrival.snap}"
                f" cannot be held: {where} the {limit} images that may wait for a next-visit"
            )
        self.book.counts["held"] += 1
        self.out.append(SaveHeld(
            (arrival.instrument, arrival.group_id, arrival.detector, arrival.snap, arrival.uri,
             arrival.event_time or consumed, consumed)
        ))  # fmt: skip

    def drop_held(self, key: VisitKey, reason: str = "visit_closed") -> None:
        """Images that waited for a next-visit that turned out ignored or canceled, or never
        came: their rows go too (else every restart would hold them again)."""
        dropped = self.book.held.pop(key)
        if dropped:
            self.metrics.ignored.labels("image-arrival", reason).inc(len(dropped))
            self.out.append(HeldApplied(key))

    def apply_image(self, visit: Visit, arrival: ImageArrival, consumed: float) -> None:
        job = visit.jobs.get(arrival.detector)
        if job is None:
            self.metrics.ignored.labels("image-arrival", "detector_not_in_task").inc()
            return
        bit = 1 << arrival.snap
        if job.snaps_mask & bit or job.state not in WAITING_FOR_IMAGE:
            self.duplicate("image-arrival")
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
            self.scheduling.ready(job)
            if job.state is not JobState.READY:
                return  # pushed (or failed): that saved its row already
        self.out.append(SaveJob(job))
