"""Taking over the state a previous term committed: the truth is what PostgreSQL holds.

``recovery.py`` reads the rows and builds the visits and jobs; this puts them back into the
book as the previous leader left them: jobs on pilots wait (a heartbeat timeout) for their
pilot to reconnect and claim them, ready jobs queue again (with the pilot that preloaded
them), held images wait again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from prompt.dispatcher.engine.effects import Effect, SaveVisitStatus
from prompt.dispatcher.engine.model import ON_PILOT, JobState, Visit, VisitKey
from prompt.dispatcher.engine.pilots import PilotState
from prompt.dispatcher.engine.queues import UNASSIGNED
from prompt.events import EventError, ImageArrival

if TYPE_CHECKING:
    from prompt.dispatcher.engine.engine import Engine

log = structlog.get_logger(__name__)


@dataclass
class SavedState:
    visits: list[Visit] = field(default_factory=list)
    """Open visits, each with all its jobs (terminal ones included)."""
    pilots: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Pilot id -> (host, slots), from the pilots table."""
    closed: list[tuple[VisitKey, str]] = field(default_factory=list)
    """Closed visits, oldest first."""
    canceled: list[tuple[str, float]] = field(default_factory=list)
    """Groups canceled before they were announced, with when."""
    held: list[tuple[ImageArrival, float]] = field(default_factory=list)


def restore(engine: Engine, saved: SavedState, out: list[Effect]) -> dict[str, int]:
    book = engine.book
    mono = engine.pilot_events.mono()
    on_pilots = ready = 0
    for visit in saved.visits:
        for job in visit.jobs.values():
            if job.terminal:
                continue
            visit.open_jobs += 1
            book.jobs[job.id] = job
            if job.state in ON_PILOT and job.pilot_id:
                pilot = book.pilots.pilots.get(job.pilot_id)
                if pilot is None:
                    host, slots = saved.pilots.get(job.pilot_id, ("", 1))
                    pilot = PilotState(job.pilot_id, slots, frozenset(), host)
                    pilot.disconnected_at = mono  # it gets a heartbeat timeout to come back
                    book.pilots.pilots[pilot.id] = pilot
                pilot.running[job.id] = job
                job.tried.add(pilot.id)
                on_pilots += 1
            elif job.state is JobState.READY:
                book.queues.add(job, job.pilot_id or UNASSIGNED)
                ready += 1
        if visit.open_jobs == 0:
            out.append(SaveVisitStatus(visit.id, "done"))
            book.close(visit.key, "done")
            continue
        book.visits[visit.key] = visit
        book.watch_expiry(visit)
    for key, status in saved.closed:
        book.close(key, status)
    for group, when in saved.canceled:
        book.remember_canceled(group, when)
    for arrival, consumed in saved.held:
        try:
            engine.arrivals.image(arrival, consumed)
        except EventError as exc:
            log.error("held image left out of recovery", group=arrival.group_id[:128],
                      detector=arrival.detector, error=str(exc))  # fmt: skip
    summary = {
        "visits": len(book.visits), "open_jobs": len(book.jobs), "on_pilots": on_pilots,
        "ready": ready, "held_images": len(saved.held), "closed_visits": len(saved.closed),
    }  # fmt: skip
    log.info("state recovered", **summary)
    return summary
