"""What ``/readyz`` and the readiness metrics report: is each part of the leader making
progress, and if not, which one and why.

Loops *beat* when they make progress (the intake loops at least every fetch wait, even when
idle); queues are *probed* for the age of their oldest unfinished work (the write-behind's
oldest uncommitted change, the oldest unpublished completion, the broker's last fetch
response). Anything older than ``stall_after_s`` makes the dispatcher not ready, with the
reason, within seconds. ``/healthz`` stays a liveness check: the process answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Probe = Callable[[], float | None]
"""Seconds the oldest unfinished piece of work has waited, or None if there is none."""


@dataclass
class Health:
    stall_after_s: float = 5.0
    role: str = "starting"
    """starting | standby | leader | stepping-down"""
    epoch: int | None = None
    _beats: dict[str, float] = field(default_factory=dict)
    _probes: dict[str, Probe] = field(default_factory=dict)
    _errors: dict[str, str] = field(default_factory=dict)

    def start_term(self, epoch: int) -> None:
        self.role, self.epoch = "leader", epoch
        self._beats.clear()
        self._probes.clear()
        self._errors.clear()

    def end_term(self, role: str = "standby") -> None:
        self.role, self.epoch = role, None
        self._beats.clear()
        self._probes.clear()

    def beat(self, component: str) -> None:
        self._beats[component] = time.monotonic()
        self._errors.pop(component, None)

    def error(self, component: str, text: str) -> None:
        """The last error of a component that is retrying (shown while it is stalled)."""
        self._errors[component] = text

    def probe(self, component: str, probe: Probe) -> None:
        self._probes[component] = probe

    def ages(self) -> dict[str, float]:
        """Seconds since each component last made progress (0: nothing outstanding)."""
        now = time.monotonic()
        ages = {name: now - at for name, at in self._beats.items()}
        for name, probe in self._probes.items():
            age = probe()
            ages[name] = 0.0 if age is None else age
        return ages

    def readiness(self) -> dict[str, Any]:
        stalled = {}
        for name, age in sorted(self.ages().items()):
            if age > self.stall_after_s:
                why = f"no progress for {age:.1f} s"
                if name in self._errors:
                    why += f" (last error: {self._errors[name]})"
                stalled[name] = why
        ready = self.role == "leader" and not stalled and bool(self._beats)
        return {"ready": ready, "role": self.role, "epoch": self.epoch, "stalled": stalled}
