"""The driver's housekeeping during a replay: progress lines, and keeping the garbage collector
off what it has collected."""

from __future__ import annotations

import gc
import time
from collections import deque

from loadtest.plan import Plan
from prompt.stats import percentile
from prompt.testing.traffic import CompletionCollector


class Progress:
    """Progress lines every 2 s. Incremental: it looks only at completions new since the last
    line (a pass over every record so far, on the driver's loop, grew with the night and made
    the driver late), and the p99 is over the most recent ``RECENT`` jobs."""

    RECENT = 5000

    def __init__(self, plan: Plan, quiet: bool, speed: float) -> None:
        self.plan = plan
        self.quiet = quiet
        self.speed = speed
        self.last = 0.0
        self._seen = 0
        self._per_visit: dict[str, int] = {}
        self._done = 0
        self._recent: deque[float] = deque(maxlen=self.RECENT)

    def maybe_print(
        self, collector: CompletionCollector, visits_total: int, force: bool = False
    ) -> None:
        now = time.monotonic()
        if self.quiet or (not force and now - self.last < 2.0):
            return
        self.last = now
        jobs_per_visit = max(1, self.plan.jobs // max(1, visits_total))
        new = collector.records[self._seen :]
        self._seen += len(new)
        for r in new:
            n = self._per_visit[r["groupId"]] = self._per_visit.get(r["groupId"], 0) + 1
            if n == jobs_per_visit:
                self._done += 1
            if r["latencySeconds"] is not None:
                self._recent.append(r["latencySeconds"] * self.speed)
        p99 = percentile(sorted(self._recent), 99) if self._recent else float("nan")
        print(
            f"  visits done {self._done}/{visits_total}  completions {len(collector.by_job)}/"
            f"{self.plan.jobs}  p99 latency (last {len(self._recent)} jobs) {p99:.1f} s",
            flush=True,
        )


class HeapFreezer:
    """Every ``every_s``, moves all the driver holds so far (by morning ~193k completion
    records) out of the garbage collector's sight: a full collection over them took ~140 ms
    (measured on 193k such dicts), a stall of the driver's schedule that grew with the night.
    The records stay referenced until the end anyway; ``stop`` gives them back to the GC."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._last = time.monotonic()

    def maybe(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s:
            gc.freeze()
            self._last = now

    @staticmethod
    def stop() -> None:
        gc.unfreeze()
