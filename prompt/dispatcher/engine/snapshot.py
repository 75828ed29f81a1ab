"""The one read model of the dispatcher's state: visits in flight and recently done, jobs by
state, queues, pilots and the jobs that went wrong — built in one place, cheap enough for
once a second. ``/status`` serves it without the error texts, ``/ui/snapshot`` and the
operator page's stream with them, the Prometheus collector reads its gauges from it, and
``prompt status`` prints the ``/status`` document it fetches.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prompt.dispatcher.engine.book import Book
from prompt.dispatcher.engine.model import TERMINAL, JobState

OPEN_STATES = tuple(s.value for s in JobState if s not in TERMINAL)
BUDGET_STATES = frozenset({JobState.READY, JobState.SENT, JobState.RUNNING})


@dataclass(frozen=True)
class Snapshot:
    now: float
    scheduling: str
    """How jobs reach pilots: ``push`` (warm) or ``poll`` (cold), chosen at start-up."""
    visits: list[dict[str, Any]]
    """In flight (``status: "in flight"``), newest first, then the last ones done."""
    jobs_by_state: dict[str, int]
    ready_queue: int
    held_images: int
    pilots: list[dict[str, Any]]
    problems: list[dict[str, Any]] = field(default_factory=list)
    """The last jobs failed, late or expired, newest first (with their error texts)."""
    oldest_budget_s: float | None = None
    """Seconds left before the deadline of the open job closest to it (negative: late)."""

    def to_json(self, *, with_errors: bool) -> dict[str, Any]:
        doc = {
            "now": self.now, "scheduling": self.scheduling, "visits": self.visits,
            "jobs_by_state": self.jobs_by_state, "ready_queue": self.ready_queue,
            "held_images": self.held_images,
            "pilots": self.pilots, "oldest_budget_s": self.oldest_budget_s,
        }  # fmt: skip
        if with_errors:
            doc["problems"] = self.problems
        return doc

    @property
    def connected_pilots(self) -> list[dict[str, Any]]:
        return [p for p in self.pilots if p["connected"]]


def snapshot(book: Book, now: float, scheduling: str) -> Snapshot:
    live = []
    states: Counter[str] = Counter()
    deadlines: list[float] = []
    for visit in sorted(book.visits.values(), key=lambda v: v.received_at, reverse=True):
        jobs = list(visit.jobs.values())
        counts = Counter(j.state.value for j in jobs)
        states.update(counts)
        open_deadlines = [j.deadline for j in jobs if j.deadline is not None and not j.terminal]
        deadlines += [
            j.deadline for j in jobs if j.deadline is not None and j.state in BUDGET_STATES
        ]
        arrived = [j.image_arrived for j in jobs if j.image_arrived is not None]
        live.append(
            {
                "group": visit.nv.group_id,
                "instrument": visit.nv.instrument,
                "task": visit.task.name,
                "filter": visit.nv.filters,
                "status": "in flight",
                "counts": dict(counts),
                "open": visit.open_jobs,
                "jobs": len(jobs),
                "preloaded": sum(1 for j in jobs if j.preloaded is not None),
                "detectors": {j.detector: j.state.value for j in jobs},
                "budget_s": (min(open_deadlines) - now) if open_deadlines else None,
                "first_image_s_ago": (now - min(arrived)) if arrived else None,
            }
        )
    pilots = [
        {
            "id": p.id,
            "host": p.host,
            "connected": p.connected,
            "draining": p.draining,
            "slots": p.slots,
            "running": len(p.running),
            "cache_entries": len(p.cache),
            "cache_stats": p.cache_stats,
        }
        for p in sorted(book.pilots.pilots.values(), key=lambda p: p.id)
    ]
    return Snapshot(
        now=now,
        scheduling=scheduling,
        visits=live + list(book.recent),
        jobs_by_state={s: states.get(s, 0) for s in OPEN_STATES},
        ready_queue=len(book.queues),
        held_images=len(book.held),
        pilots=pilots,
        problems=list(reversed(book.problems))[:30],
        oldest_budget_s=(min(deadlines) - now) if deadlines else None,
    )
