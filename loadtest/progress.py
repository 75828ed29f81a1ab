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


class GcPacer:
    """The driver's garbage collection, moved into the schedule's gaps.

    Left automatic, a full collection ran whenever allocation counts said so, in the middle of a
    burst of sends: in ``make demo`` (measured with ``gc.callbacks``) a full collection over the
    start-up heap took 95-130 ms around the first visits, up to 470 ms on a loaded machine, and
    every send behind it was late, so about one demo in three was judged invalid for driver lag.
    So: one full collection and a freeze before the schedule starts, automatic collection off,
    and a collection of only what is new since the last freeze, then frozen too, whenever the
    next event is at least ``gap_s`` away (at most every ``every_s``), and at the latest every
    ``max_every_s`` even without a gap. What the driver keeps (by morning ~193k completion
    records) is never scanned twice; ``stop`` gives everything back to the collector."""

    def __init__(
        self, gap_s: float = 0.05, every_s: float = 1.0, max_every_s: float = 10.0
    ) -> None:
        self.gap_s = gap_s
        self.every_s = every_s
        self.max_every_s = max_every_s
        self._last = time.monotonic()

    def start(self) -> None:
        gc.collect()
        gc.freeze()
        gc.disable()
        self._last = time.monotonic()

    def idle(self, wait_s: float) -> None:
        """The next event is ``wait_s`` away: collect now if it is time."""
        now = time.monotonic()
        since = now - self._last
        if (wait_s >= self.gap_s and since >= self.every_s) or since >= self.max_every_s:
            gc.collect()
            gc.freeze()
            self._last = time.monotonic()

    @staticmethod
    def stop() -> None:
        gc.unfreeze()
        gc.enable()
