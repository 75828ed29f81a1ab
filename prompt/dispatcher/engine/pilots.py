"""Pilots as the engine sees them (no connections: those belong to the pilot server), and the
choice of pilot for a job."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prompt.dispatcher.engine.model import Job


@dataclass(eq=False)
class PilotState:
    id: str
    slots: int
    labels: frozenset[str]
    host: str
    connected: bool = False
    """A connection is open (the pilot server says so)."""
    registered_at: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.monotonic)
    draining: bool = False
    cache: set[tuple[str, int, str]] = field(default_factory=set)
    cache_stats: dict[str, Any] = field(default_factory=dict)
    running: dict[int, Job] = field(default_factory=dict)
    """Jobs sent to the pilot and not ended: running, or queued in its backlog."""
    assigned: int = 0
    """Jobs assigned (preloaded) to this pilot and not yet ended: the load used for placement."""
    disconnected_at: float | None = None
    persisted_at: float = 0.0
    """When its row in the pilots table was last refreshed (monotonic)."""

    @property
    def free(self) -> int:
        """Slots with no job (negative: jobs wait in its backlog)."""
        return self.slots - len(self.running)

    def accepts(self, labels: frozenset[str]) -> bool:
        return self.connected and not self.draining and labels <= self.labels


class PilotRegistry:
    def __init__(self) -> None:
        self.pilots: dict[str, PilotState] = {}

    def connected(self) -> list[PilotState]:
        return [p for p in self.pilots.values() if p.connected]

    def choose_for_preload(
        self, instrument: str, detector: int, filter: str, labels: frozenset[str]
    ) -> PilotState | None:
        """Cache affinity first (a pilot holding this detector+filter), then the least loaded
        relative to its slots. Deterministic, so consecutive visits land where caches are."""
        best: PilotState | None = None
        best_rank: tuple[int, float, str] | None = None
        key = (instrument, detector, filter)
        for pilot in self.pilots.values():
            if not pilot.accepts(labels):
                continue
            rank = (0 if key in pilot.cache else 1, pilot.assigned / pilot.slots, pilot.id)
            if best_rank is None or rank < best_rank:
                best, best_rank = pilot, rank
        return best

    def choose_for_run(
        self, job: Job, labels: frozenset[str], *, backlog: int = 0
    ) -> PilotState | None:
        """The assigned pilot if it has room (a free slot, or ``backlog`` beyond its slots);
        else a pilot with room that holds the job's calibrations; else the pilot with the most
        free slots. Pilots not yet tried for this job come first."""
        if job.pilot_id is not None:
            assigned = self.pilots.get(job.pilot_id)
            if (
                assigned is not None
                and assigned.accepts(labels)
                and assigned.free + backlog > 0
                and assigned.id not in job.tried
            ):
                return assigned
        key = job.cache_key
        best: PilotState | None = None
        best_rank: tuple[int, int, int] | None = None
        for pilot in self.pilots.values():
            if pilot.free + backlog <= 0 or not pilot.accepts(labels):
                continue
            cold = 0 if key in pilot.cache else 1
            rank = (1 if pilot.id in job.tried else 0, cold, -pilot.free)
            if best_rank is None or rank < best_rank:
                best, best_rank = pilot, rank
        return best

    def reassign(self, job: Job, pilot: PilotState) -> None:
        """The job goes to ``pilot``: the load it counted on the pilot it was with moves too,
        so ``assigned`` stays the jobs each pilot has and that have not ended."""
        previous = self.pilots.get(job.pilot_id) if job.pilot_id else None
        if previous is not None:
            previous.assigned = max(0, previous.assigned - 1)
        pilot.assigned += 1
