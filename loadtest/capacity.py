"""``prompt replay --capacity-drop FRACTION@START-END``: part of the pilots gone for a while.

For the window (night time after the replay's start, e.g. ``0.5@10m-15m``) that fraction of the
pilots is killed (SIGKILL of each pilot's process group) at its start and each one started again
under the same id at its end. A kill, not a SIGSTOP: "half the pilots gone for minutes" is
capacity that is absent (a node lost or drained, an allocation ended), and the dispatcher
sees it at once from the dropped connection; the jobs those pilots were running are lost
with them and the dispatcher retries them elsewhere. A SIGSTOP would model a hang instead (the
heartbeat timeout turns it into the same loss, and a pilot then comes back holding stale
work): another fault, which the liveness tests exercise.

The demand stays as planned, so for the window it exceeds what is left: which jobs the
dispatcher runs first decides how many still make their budget (``--dispatch-order``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from loadtest.chaos import SETTLE_S
from loadtest.plan import IMAGE, Plan

_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)([hms]?)$")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}
PHASES = ("before", "during", "after")


@dataclass(frozen=True)
class CapacityDrop:
    fraction: float
    start_s: float
    """Night seconds after the replay's start."""
    end_s: float

    def count(self, pilots: int) -> int:
        """Pilots taken away: the fraction of them, rounded, at least one, never all."""
        return min(pilots - 1, max(1, round(self.fraction * pilots))) if pilots > 1 else 0

    def wall_window(self, speed: float) -> tuple[float, float]:
        return self.start_s / speed, self.end_s / speed


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1.5h`` -> seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 10m, 1.5h)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def parse_capacity_drop(text: str) -> CapacityDrop:
    """``FRACTION@START-END``, e.g. ``0.5@10m-15m`` (night time after the replay's start)."""
    fraction, sep, window = text.partition("@")
    start, dash, end = window.partition("-")
    if not sep or not dash:
        raise ValueError(f"--capacity-drop {text!r}: expected FRACTION@START-END, e.g. 0.5@10m-15m")
    try:
        drop = CapacityDrop(float(fraction), parse_duration(start), parse_duration(end))
    except ValueError as exc:
        raise ValueError(f"--capacity-drop {text!r}: {exc}") from None
    if not 0 < drop.fraction < 1:
        raise ValueError(f"--capacity-drop {text!r}: the fraction must be in (0, 1)")
    if drop.end_s <= drop.start_s:
        raise ValueError(f"--capacity-drop {text!r}: the window must end after it starts")
    return drop


def image_phases(plan: Plan, window: tuple[float, float]) -> dict[int, str]:
    """Visit index -> ``before``, ``during`` or ``after`` the (wall) window, by when its
    first image is planned to arrive; visits with no image (canceled) are left out."""
    first: dict[int, float] = {}
    for e in plan.events:
        if e.kind == IMAGE and e.visit.index not in first:
            first[e.visit.index] = e.wall
    start, end = window
    return {
        v: "before" if wall < start else "during" if wall <= end else "after"
        for v, wall in first.items()
    }


@dataclass
class CapacityCut:
    """The driver's side: :meth:`step` kills the chosen pilots once the window has started and
    starts them again once it has ended; it records when it did each."""

    drop: CapacityDrop
    speed: float
    seed: int
    victims: list[str] = field(default_factory=list)
    dropped_wall: float | None = None
    """Wall s after the replay's start when the pilots were killed; restored_wall: started."""
    restored_wall: float | None = None

    @property
    def window(self) -> tuple[float, float]:
        return self.drop.wall_window(self.speed)

    @property
    def done(self) -> bool:
        return self.restored_wall is not None

    def step(
        self, now: float, pilots: Iterable[str], kill: Callable[[str], None],
        spawn: Callable[[str], None],
    ) -> bool:  # fmt: skip
        """``now``: wall s after the start; ``pilots``: the ids running. True when it acted."""
        start, end = self.window
        if self.dropped_wall is None and now >= start:
            ids = sorted(pilots)
            rng = random.Random(f"capacity-{self.seed}")
            self.victims = sorted(rng.sample(ids, self.drop.count(len(ids))))
            for pid in self.victims:
                kill(pid)
            self.dropped_wall = now
            return True
        if self.dropped_wall is not None and self.restored_wall is None and now >= end:
            for pid in self.victims:
                spawn(pid)
            self.restored_wall = now
            return True
        return False

    def disturbed(self, since: float, now: float) -> bool:
        """Whether the pilots were killed or started again, or less than ``SETTLE_S`` before,
        between ``since`` and ``now`` (wall s after the start): a send in that span was
        delayed by the cut (the driver's own kill, then the dying and the starting processes
        taking the CPU it shares with them on this one machine), not by the driver."""
        return any(
            t is not None and since <= t + SETTLE_S and t <= now
            for t in (self.dropped_wall, self.restored_wall)
        )

    def as_dict(self) -> dict[str, object]:
        start, end = self.window
        return {
            "fraction": self.drop.fraction,
            "window_night_s": [self.drop.start_s, self.drop.end_s],
            "window_wall_s": [round(start, 3), round(end, 3)],
            "pilots_dropped": self.victims,
            "dropped_wall_s": None if self.dropped_wall is None else round(self.dropped_wall, 3),
            "restored_wall_s": None if self.restored_wall is None else round(self.restored_wall, 3),
        }
