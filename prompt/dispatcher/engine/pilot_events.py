"""What pilots say and do: registering, heartbeats, preloads, starts, results, polls, going
silent or away. The pilot server has checked the token and the frame; messages here are
typed, but their values still come from the network and are bounded on the way in."""

from __future__ import annotations

from typing import Any

import structlog

from prompt.bounds import bound_counts, bound_error, bound_log, bound_stages, finite_or_none
from prompt.channel import frames
from prompt.channel.messages import Ack
from prompt.dispatcher.engine.book import Desk
from prompt.dispatcher.engine.dispatch import Dispatch
from prompt.dispatcher.engine.effects import Disconnect, SaveJob, SavePilot, Send
from prompt.dispatcher.engine.lifecycle import Lifecycle
from prompt.dispatcher.engine.model import ON_PILOT, Job, JobState
from prompt.dispatcher.engine.outcomes import FailureKind
from prompt.dispatcher.engine.pilots import PilotState
from prompt.dispatcher.engine.scheduling import Scheduling

log = structlog.get_logger(__name__)


class PilotEvents(Desk):
    scheduling: Scheduling
    lifecycle: Lifecycle
    dispatch: Dispatch
    """Set by the engine."""

    def registered(
        self,
        pilot_id: str,
        *,
        slots: int,
        labels: frozenset[str],
        host: str,
        cache: set[tuple[str, int, str]],
        draining: bool,
        claimed: list[tuple[int, int]],
    ) -> PilotState:
        """A pilot (re)connected. Jobs it says it has stay with it; jobs this dispatcher
        thought it had but it does not mention were lost with its previous connection."""
        registry = self.book.pilots.pilots
        pilot = registry.get(pilot_id)
        if pilot is None:
            pilot = registry[pilot_id] = PilotState(pilot_id, slots, labels, host)
            pilot.registered_at = self.wall()
        pilot.slots, pilot.labels, pilot.host = slots, labels, host
        pilot.connected, pilot.draining, pilot.cache = True, draining, cache
        pilot.last_seen = self.mono()
        pilot.disconnected_at = None
        mine = set(claimed)
        for job_id, job in list(pilot.running.items()):
            if (job_id, job.attempt) not in mine:
                del pilot.running[job_id]
                self.lifecycle.lost(job, f"pilot {pilot.id} reconnected without the job")
        for job_id, attempt in claimed:
            claimed_job = self.book.jobs.get(job_id)
            if claimed_job is None:
                continue
            if (
                claimed_job.attempt == attempt
                and claimed_job.state in ON_PILOT
                and claimed_job.pilot_id == pilot.id
            ):
                pilot.running[job_id] = claimed_job
                if job_id in self.book.withdrawing:  # the request may have gone with the link
                    self.dispatch.withdraw(claimed_job, self.book.withdrawing[job_id])
            elif self._adoptable(claimed_job, attempt):
                self._adopt(pilot, claimed_job, attempt)
        self.out.append(SavePilot(self._row(pilot, "connected")))
        self.scheduling.capacity(pilot)
        return pilot

    @staticmethod
    def _adoptable(job: Job, attempt: int) -> bool:
        """A job this dispatcher has not placed, claimed by a pilot with an attempt newer than
        any it knows: a push by a previous leader whose write was lost with its term (the
        database still had the job waiting). The pilot has it, or its result. (An attempt it
        knows and has taken back, from a pilot it declared lost, stays superseded.)"""
        return not job.terminal and job.state not in ON_PILOT and attempt > job.attempt

    def _adopt(self, pilot: PilotState, job: Job, attempt: int) -> None:
        """Take the pilot's word: the job is running there (its result, if already made, is
        accepted as any other), rather than pushing it again and running it twice."""
        log.info(
            "job adopted from a pilot", group=job.visit.nv.group_id, detector=job.detector,
            job=job.id, attempt=attempt, pilot=pilot.id, was=job.state.value,
        )  # fmt: skip
        self.book.queues.discard(job)  # a READY job leaves its queue
        job.attempt, job.pilot_id, job.state = attempt, pilot.id, JobState.RUNNING
        pilot.running[job.id] = job
        self.out.append(SaveJob(job))

    def _row(self, pilot: PilotState, state: str) -> tuple[Any, ...]:
        cache = [list(c) for c in sorted(pilot.cache)]
        return (pilot.id, pilot.host, pilot.slots, state, cache, pilot.registered_at, self.wall())

    def disconnected(self, pilot_id: str) -> None:
        """Its connection closed (or a frame could not be written to it)."""
        pilot = self.book.pilots.pilots.get(pilot_id)
        if pilot is not None and pilot.connected:
            pilot.connected = False
            pilot.disconnected_at = self.mono()

    def heartbeat(self, pilot: PilotState, msg: dict[str, Any]) -> None:
        pilot.last_seen = self.mono()
        was_draining = pilot.draining
        pilot.draining = bool(msg.get("draining"))
        cache = msg.get("cache")
        if isinstance(cache, list):
            pilot.cache = {(str(c[0]), int(c[1]), str(c[2])) for c in cache}
        stats = msg.get("cache_stats")
        pilot.cache_stats = stats if isinstance(stats, dict) else {}
        if was_draining != pilot.draining:
            log.info("pilot draining", pilot=pilot.id)
        if pilot.last_seen - pilot.persisted_at > self.config.pilot_row_refresh_s:
            pilot.persisted_at = pilot.last_seen
            self.out.append(
                SavePilot(self._row(pilot, "draining" if pilot.draining else "connected"))
            )
        self.scheduling.capacity(pilot)

    def poll(self, pilot: PilotState) -> None:
        pilot.last_seen = self.mono()
        self.scheduling.poll(pilot)

    def preloaded(self, pilot: PilotState, msg: dict[str, Any]) -> None:
        done = finite_or_none(msg.get("t_done")) or self.wall()
        for item in msg.get("items") or []:
            self.metrics.preload.labels("hit" if item.get("hit") else "miss").inc()
            job = self.book.jobs.get(int(item["job"]))
            if job is not None and job.pilot_id == pilot.id:
                job.preloaded = done

    def started(self, pilot: PilotState, msg: dict[str, Any]) -> None:
        job = self.book.jobs.get(msg["job"])
        if job is None or job.attempt != msg["attempt"] or job.pilot_id != pilot.id:
            return
        if job.state is JobState.SENT:
            job.state = JobState.RUNNING
            job.started = finite_or_none(msg.get("at")) or self.wall()
            if job.attempt == 1 and job.image_consumed is not None:
                self.metrics.dispatch.observe(max(0.0, job.started - job.image_consumed))
            self.out.append(SaveJob(job))

    def finished(self, pilot: PilotState, msg: dict[str, Any]) -> None:
        job_id, attempt = msg["job"], msg["attempt"]
        ack: Ack = {"t": "ack", "job": job_id, "attempt": attempt}
        then = Send(pilot.id, frames.encode(ack))
        job = self.book.jobs.get(job_id)
        if (
            job is None
            or job.terminal
            or job.attempt != attempt
            or job.pilot_id != pilot.id
            or job.state not in ON_PILOT
        ):
            # A result we already have, or of an attempt that was superseded: nothing to do.
            self.out.append(then)
            return
        pilot.running.pop(job.id, None)
        job.started = finite_or_none(msg.get("started")) or job.started or self.wall()
        job.finished = finite_or_none(msg.get("finished")) or self.wall()
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
            self.book.queues.order.runtimes.observe(job)
            job.error, job.failure = None, None
            late = job.deadline is not None and job.finished > job.deadline
            self.lifecycle.complete(job, JobState.LATE if late else JobState.FINISHED, then=then)
        else:
            error = bound_error(msg.get("error") or "payload failed")
            kind = FailureKind.parse(msg.get("failure"))
            self.lifecycle.failed_attempt(job, kind, error, then=then)
        self.scheduling.capacity(pilot)

    def withdrawn(self, pilot: PilotState, msg: dict[str, Any]) -> None:
        """The pilot's answer to ``withdraw``: it gave the attempt back unstarted (it never
        runs it: a new attempt may go elsewhere), or it had started it (it runs there)."""
        job = self.book.jobs.get(msg["job"])
        if job is None or job.attempt != msg["attempt"] or job.pilot_id != pilot.id:
            return
        to = self.book.withdrawing.pop(job.id, pilot.id)
        if msg.get("withdrawn") is not True or job.state not in ON_PILOT:
            return
        pilot.running.pop(job.id, None)
        job.withdrawals += 1
        if to is None:
            self.lifecycle.cancel(job)
        else:
            job.state = JobState.READY
            self.out.append(SaveJob(job))
            self.scheduling.ready(job)
        self.scheduling.capacity(pilot)

    def check_liveness(self) -> None:
        """Pilots silent, or gone without reconnecting, for the heartbeat timeout are lost."""
        mono = self.mono()
        timeout = self.config.heartbeat_timeout_s
        for pilot in list(self.book.pilots.pilots.values()):
            if pilot.connected and mono - pilot.last_seen > timeout:
                self._lost(pilot, f"no heartbeat for {timeout:.1f} s")
            elif (
                not pilot.connected
                and pilot.disconnected_at is not None
                and mono - pilot.disconnected_at > timeout
            ):
                self._lost(pilot, f"did not reconnect within {timeout:.1f} s")

    def _lost(self, pilot: PilotState, why: str) -> None:
        log.warning("pilot lost", pilot=pilot.id, reason=why, jobs=len(pilot.running))
        self.metrics.pilots_lost.inc()
        if pilot.connected:
            # A pilot that was only stalled must notice: it reconnects and registers afresh,
            # and the results of the attempts retried meanwhile are fenced by attempt.
            self.out.append(Disconnect(pilot.id))
        jobs = list(pilot.running.values())
        pilot.running.clear()
        pilot.assigned = 0
        pilot.cache.clear()
        pilot.connected = False
        del self.book.pilots.pilots[pilot.id]
        self.out.append(SavePilot(self._row(pilot, "lost")))
        for job in jobs:
            self.lifecycle.lost(job, f"pilot {pilot.id} lost ({why})")
