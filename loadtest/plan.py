"""Turn a night into a timed list of events, with the faults to inject, deterministic by seed.

Time runs ``speed`` times faster than the night: every night duration (cadence, exposure,
transfer delay, payload run time, deadline) is divided by ``speed``. ``wall`` times below are
seconds after the replay starts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loadtest.schedule import Night, PlannedVisit

if TYPE_CHECKING:
    from loadtest.capacity import CapacityDrop

NEXT_VISIT = "next-visit"
CANCEL = "cancel"
IMAGE = "image"


@dataclass(frozen=True)
class Faults:
    missing_images: float = 0.0
    """Fraction of (visit, detector) whose images never arrive (expected: expired)."""
    duplicate_events: float = 0.0
    """Fraction of next-visits and of images published twice."""
    late_images: float = 0.0
    """Fraction of images delayed by a further 20-40 s (night) in transfer."""
    canceled_visits: float = 0.0
    """Fraction of visits canceled after their next-visit (expected: canceled)."""
    kill_pilots: int = 0
    """Pilots killed (SIGKILL) at random times, each replaced 1 s later."""
    capacity_drop: CapacityDrop | None = None
    """A fraction of the pilots gone for a window of the night (see loadtest.capacity)."""


@dataclass(frozen=True)
class Timing:
    speed: float = 10.0
    lead_s: float = 25.0
    """next-visit this long before the visit starts (night s; Rubin guarantees >= 20)."""
    readout_s: float = 2.0
    transfer_median_s: float = 1.5
    transfer_sigma: float = 0.4
    transfer_tail: float = 0.01
    """Fraction of transfers that take a further 5-15 s (night)."""


@dataclass(order=True)
class Event:
    wall: float
    seq: int
    kind: str = field(compare=False)
    visit: PlannedVisit = field(compare=False)
    detector: int = field(default=-1, compare=False)
    snap: int = field(default=0, compare=False)


@dataclass
class Plan:
    events: list[Event]
    expected: dict[tuple[int, int], frozenset[str]]
    """(visit index, detector) -> statuses its completion may rightly have."""
    canceled: set[int]
    missing: set[tuple[int, int]]
    late: set[tuple[int, int, int]]
    kill_times: list[float]
    end_wall: float

    @property
    def jobs(self) -> int:
        return len(self.expected)


def build_plan(
    night: Night, detectors: list[int], timing: Timing, faults: Faults, seed: int
) -> Plan:
    rng = random.Random(seed)
    s = timing.speed
    offset = timing.lead_s / s + 0.5  # first next-visit half a second in
    events: list[Event] = []
    expected: dict[tuple[int, int], frozenset[str]] = {}
    canceled: set[int] = set()
    missing: set[tuple[int, int]] = set()
    late: set[tuple[int, int, int]] = set()
    seq = 0

    def add(wall: float, kind: str, visit: PlannedVisit, detector: int = -1, snap: int = 0) -> None:
        nonlocal seq
        events.append(Event(wall, seq, kind, visit, detector, snap))
        seq += 1

    for v in night.visits:
        start_w = offset + v.start / s
        add(start_w - timing.lead_s / s, NEXT_VISIT, v)
        if rng.random() < faults.duplicate_events:
            add(start_w - timing.lead_s / s + 0.2 / s, NEXT_VISIT, v)
        if rng.random() < faults.canceled_visits:
            canceled.add(v.index)
            add(start_w + 1.0 / s, CANCEL, v)
            for d in detectors:
                expected[(v.index, d)] = frozenset({"canceled"})
            continue
        per_snap = v.exp_time / v.n_snaps
        for d in detectors:
            if rng.random() < faults.missing_images:
                missing.add((v.index, d))
                expected[(v.index, d)] = frozenset({"expired"})
                continue
            expected[(v.index, d)] = frozenset({"finished", "late"})
            for k in range(v.n_snaps):
                end_of_readout = v.start + (k + 1) * (per_snap + timing.readout_s)
                transfer = rng.lognormvariate(0, timing.transfer_sigma) * timing.transfer_median_s
                if rng.random() < timing.transfer_tail:
                    transfer += rng.uniform(5, 15)
                if rng.random() < faults.late_images:
                    transfer += rng.uniform(20, 40)
                    late.add((v.index, d, k))
                wall = offset + (end_of_readout + transfer) / s
                add(wall, IMAGE, v, d, k)
                if rng.random() < faults.duplicate_events:
                    add(wall + rng.uniform(0.1, 2.0) / s, IMAGE, v, d, k)
    events.sort()
    end_wall = events[-1].wall if events else 0.0
    kill_times = sorted(rng.uniform(0.1, 0.8) * end_wall for _ in range(faults.kill_pilots))
    return Plan(events, expected, canceled, missing, late, kill_times, end_wall)


FAULT_MARGIN_S = 60.0
"""Night seconds either side of a fault's outage within which a visit counts as in flight."""


def relaxed_for_faults(
    plan: Plan, windows: list[tuple[float, float]], speed: float
) -> tuple[dict[tuple[int, int], frozenset[str]], set[tuple[int, int]]]:
    """The statuses each job may rightly end with when the service was hit by faults, and the
    jobs whose set was relaxed. ``windows``: (kill, recovered) in wall s after the start.

    A job is in flight around a fault when one of its events (an image, its visit's cancel) is
    planned within [kill - 60 night s, recovered + 60 night s]. Such a job may also end
    ``late`` (its images wait out the outage: already allowed for every delivered image), and a
    canceled visit's job ``expired`` (its cancel, sent during a broker outage, may reach the
    service after the job's image timeout). Never lost, never twice, never ``failed``; a
    missing image stays ``expired``; every other job keeps the strict set."""
    margin = FAULT_MARGIN_S / speed

    def in_flight(wall: float) -> bool:
        return any(start - margin <= wall <= end + margin for start, end in windows)

    expected = dict(plan.expected)
    relaxed: set[tuple[int, int]] = set()
    for e in plan.events:
        if e.kind == NEXT_VISIT or not in_flight(e.wall):
            continue
        keys = (
            [(e.visit.index, e.detector)]
            if e.kind == IMAGE
            else [k for k in expected if k[0] == e.visit.index]
        )
        for key in keys:
            extra = {"expired"} if e.visit.index in plan.canceled else {"late"}
            if key in plan.missing:
                extra = set()
            expected[key] = expected[key] | extra
            relaxed.add(key)
    return expected, relaxed
