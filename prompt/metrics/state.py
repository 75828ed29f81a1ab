"""Gauges computed when Prometheus scrapes, from the dispatcher's memory: nothing on the hot
path updates them, and they are always consistent with each other."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prompt.dispatcher.health import Health
    from prompt.dispatcher.http import TermView

OPEN_STATES = ("defined", "assigned", "preloading", "ready", "sent", "running")
BUDGET_STATES = frozenset({"ready", "sent", "running"})


class DispatcherStateCollector(Collector):
    def __init__(self, view: TermView, health: Health) -> None:
        self._view = view
        self._health = health

    def collect(self) -> Iterable[Any]:
        health = self._health
        readiness = health.readiness()
        yield GaugeMetricFamily(
            "prompt_ready", "1 if this dispatcher is ready (leading, nothing stalled)",
            value=1 if readiness["ready"] else 0,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "prompt_leader", "1 if this process holds the leader lock", value=1 if
            health.role == "leader" else 0,
        )  # fmt: skip
        ages = GaugeMetricFamily(
            "prompt_component_progress_age_seconds",
            "seconds since each part of the leader last made progress (0: nothing outstanding)",
            labels=["component"],
        )
        for component, age in sorted(health.ages().items()):
            ages.add_metric([component], age)
        yield ages
        running = self._view.running
        if running is None:
            return
        d = running.dispatcher
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
            value=len(d.held),
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
        for (topic, partition), value in sorted(running.intake.lag().items()):
            lag.add_metric([topic, str(partition)], value)
        yield lag
