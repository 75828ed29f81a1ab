"""Event-loop stalls: a tiny task that asks to wake every ``interval_s`` and records how late it
woke. A late wake-up is time the loop spent on something else without yielding (a long
callback, a blocking call, a GC pause): exactly what delays every image push behind it."""

from __future__ import annotations

import asyncio
import time
from collections import deque

from prometheus_client import CollectorRegistry, Gauge, Histogram

LAG_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LoopLagMonitor:
    def __init__(
        self, registry: CollectorRegistry, *, interval_s: float = 0.05, window_s: float = 10.0
    ) -> None:
        self.interval_s = interval_s
        self._recent: deque[tuple[float, float]] = deque()
        self._window_s = window_s
        self.lag = Histogram(
            "prompt_event_loop_lag_seconds",
            "how late the event loop woke a task that asked to sleep (a stall)",
            buckets=LAG_BUCKETS_S,
            registry=registry,
        )
        gauge = Gauge(
            "prompt_event_loop_lag_max_seconds",
            "longest event-loop stall in the last 10 s",
            registry=registry,
        )
        gauge.set_function(self.recent_max)

    def observe(self, now: float, lag_s: float) -> None:
        self.lag.observe(lag_s)
        self._recent.append((now, lag_s))
        while self._recent and self._recent[0][0] < now - self._window_s:
            self._recent.popleft()

    def recent_max(self) -> float:
        return max((lag for _, lag in self._recent), default=0.0)

    async def run(self) -> None:
        while True:
            asked = time.monotonic()
            await asyncio.sleep(self.interval_s)
            now = time.monotonic()
            self.observe(now, max(0.0, now - asked - self.interval_s))
