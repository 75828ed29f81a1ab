"""Visits and jobs as the engine holds them. PostgreSQL holds the same state durably; the
engine works from memory and its effects write every change behind (see ``writer.py``)."""

from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass, field
from typing import Any

from prompt.dispatcher.engine.outcomes import FailureKind
from prompt.events.models import NextVisit
from prompt.tasks import Task


class JobState(enum.StrEnum):
    DEFINED = "defined"
    ASSIGNED = "assigned"
    PRELOADING = "preloading"
    READY = "ready"
    SENT = "sent"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    LATE = "late"
    EXPIRED = "expired"
    CANCELED = "canceled"


VisitKey = tuple[str, str]
"""(instrument, group id)."""

TERMINAL = frozenset(
    {JobState.FINISHED, JobState.FAILED, JobState.LATE, JobState.EXPIRED, JobState.CANCELED}
)
WAITING_FOR_IMAGE = frozenset({JobState.DEFINED, JobState.ASSIGNED, JobState.PRELOADING})
ON_PILOT = frozenset({JobState.SENT, JobState.RUNNING})


@dataclass(eq=False, slots=True)
class Job:
    id: int
    visit: Visit
    detector: int
    max_attempts: int
    state: JobState = JobState.DEFINED
    attempt: int = 0
    pilot_id: str | None = None
    snaps_mask: int = 0
    snap_uris: dict[int, str] = field(default_factory=dict)
    """Raw URI per snap number, as the images arrived (persisted: a restart keeps them)."""
    snap_obs_ids: dict[int, str] = field(default_factory=dict)
    """Exposure id per snap number."""
    cache_hit: bool | None = None
    error: str | None = None
    failure: FailureKind | None = None
    """Why the last attempt failed (None: it did not)."""
    deadline: float | None = None
    image_arrived: float | None = None
    image_consumed: float | None = None
    dispatched: float | None = None
    started: float | None = None
    finished: float | None = None
    completed: float | None = None
    result: dict[str, Any] | None = None
    tried: set[str] = field(default_factory=set)
    preloaded: float | None = None
    """When the assigned pilot reported its calibrations loaded."""
    withdrawals: int = 0
    """Attempts given back unstarted by a pilot's backlog (they count as no try)."""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def cache_key(self) -> tuple[str, int, str]:
        """(instrument, detector, filter): what a pilot's cache summary lists."""
        nv = self.visit.nv
        return (nv.instrument, self.detector, nv.filters)

    def snaps_complete(self) -> bool:
        return self.snaps_mask.bit_count() >= self.visit.snaps_expected

    @property
    def uris(self) -> list[str]:
        """The raws of every snap that arrived, in snap order."""
        return [self.snap_uris[s] for s in sorted(self.snap_uris)]

    @property
    def image_uri(self) -> str | None:
        """The first snap's raw."""
        return self.snap_uris[min(self.snap_uris)] if self.snap_uris else None

    @property
    def obs_id(self) -> str:
        """The visit's exposure id: that of its first snap."""
        return self.snap_obs_ids[min(self.snap_obs_ids)] if self.snap_obs_ids else ""


@dataclass(eq=False, slots=True)
class Visit:
    id: int
    nv: NextVisit
    task: Task
    received_at: float
    expires_at: float
    jobs: dict[int, Job] = field(default_factory=dict)
    open_jobs: int = 0
    status: str = "active"

    @property
    def key(self) -> tuple[str, str]:
        return (self.nv.instrument, self.nv.group_id)

    @property
    def snaps_expected(self) -> int:
        return max(1, self.nv.nimages)

    base_fields: dict[str, Any] = field(default_factory=dict)
    """Payload fields shared by all jobs of the visit, built once at resurrection."""
    day_obs: int = 0

    def __post_init__(self) -> None:
        self.day_obs = _day_obs(self.nv.group_id, self.received_at)


_ISO_PREFIX = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?")


def _day_obs(group_id: str, fallback: float) -> int:
    """Rubin observing day: the UTC date twelve hours earlier, from the ISO time the group id
    starts with (a suffix, as in ``2025-05-01T23:33:14.762-2``, is allowed), else ``fallback``."""
    match = _ISO_PREFIX.match(group_id)
    try:
        t = dt.datetime.fromisoformat(match.group(0)) if match else None
        if t is None:
            t = dt.datetime.fromtimestamp(fallback, dt.UTC).replace(tzinfo=None)
        return int((t - dt.timedelta(hours=12)).strftime("%Y%m%d"))
    except (ValueError, OverflowError, OSError):
        return 0  # no plausible date: the payload gets day_obs 0 rather than a crash
