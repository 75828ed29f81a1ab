"""Gauges computed when Prometheus scrapes, from the dispatcher's memory: nothing on the hot
path updates them, and they are always consistent with each other."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prompt.dispatcher.core import Dispatcher

OPEN_STATES = ("defined", "assigned", "preloading", "ready", "sent", "running")
BUDGET_STATES = frozenset({"ready", "sent", "running"})


class DispatcherStateCollector(Collector):
    def __init__(
        self, dispatcher: Dispatcher, lag: Callable[[], dict[tuple[str, int], int]]
    ) -> None:
        self._d = dispatcher
        self._lag = lag

    def collect(self) -> Iterable[Any]:
        d = self._d
        states = Counter(job.state.value for job in d.jobs.values())
        jobs = GaugeMetricFamily("prompt_jobs", "open jobs by state", labels=["state"])
        for state in OPEN_STATES:
            jobs.add_metric([state], states.get(state, 0))
        yield jobs
        yield GaugeMetricFamily("prompt_visits_open", "visits with open jobs", value=len(d.visits))
        yield GaugeMetricFamily(
            "prompt_ready_queue", "jobs ready and waiting for a free slot", value=len(d._ready)
        )
        yield GaugeMetricFamily(
            "prompt_held_images",
            "image arrivals waiting for their next-visit",
            value=sum(len(v) for v in d.held.values()),
        )
        pilots = [p for p in d.pilots.pilots.values() if p.connected]
        yield GaugeMetricFamily(
            "prompt_pilots", "pilots with an open connection", value=len(pilots)
        )
        yield GaugeMetricFamily(
            "prompt_pilot_slots",
            "job slots of connected pilots",
            value=sum(p.slots for p in pilots),
        )
        yield GaugeMetricFamily(
            "prompt_pilot_slots_busy",
            "slots running a job",
            value=sum(len(p.running) for p in pilots),
        )
        deadlines = [
            job.deadline
            for job in d.jobs.values()
            if job.deadline is not None and job.state.value in BUDGET_STATES
        ]
        if deadlines:
            yield GaugeMetricFamily(
                "prompt_oldest_job_budget_seconds",
                "seconds left before the deadline of the open job closest to it (negative: late)",
                value=min(deadlines) - time.time(),
            )
        lag = GaugeMetricFamily(
            "prompt_consumer_lag_messages",
            "messages in the partition not yet consumed",
            labels=["topic", "partition"],
        )
        for (topic, partition), value in sorted(self._lag().items()):
            lag.add_metric([topic, str(partition)], value)
        yield lag
