"""Gauges computed when Prometheus scrapes, from the dispatcher's memory: nothing on the hot
path updates them, and they are always consistent with each other."""

from __future__ import annotations

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
        snap = running.engine.snapshot()
        jobs = GaugeMetricFamily("prompt_jobs", "open jobs by state", labels=["state"])
        for state, count in snap.jobs_by_state.items():
            jobs.add_metric([state], count)
        yield jobs
        in_flight = sum(1 for v in snap.visits if v["status"] == "in flight")
        yield GaugeMetricFamily("prompt_visits_open", "visits with open jobs", value=in_flight)
        yield GaugeMetricFamily(
            "prompt_ready_queue", "jobs ready and waiting for a free slot", value=snap.ready_queue
        )
        yield GaugeMetricFamily(
            "prompt_held_images", "image arrivals waiting for their next-visit",
            value=snap.held_images,
        )  # fmt: skip
        pilots = snap.connected_pilots
        yield GaugeMetricFamily(
            "prompt_pilots", "pilots with an open connection", value=len(pilots)
        )
        yield GaugeMetricFamily(
            "prompt_pilot_slots", "job slots of connected pilots",
            value=sum(p["slots"] for p in pilots),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "prompt_pilot_slots_busy", "slots running a job",
            value=sum(p["running"] for p in pilots),
        )  # fmt: skip
        if snap.oldest_budget_s is not None:
            yield GaugeMetricFamily(
                "prompt_oldest_job_budget_seconds",
                "seconds left before the deadline of the open job closest to it (negative: late)",
                value=snap.oldest_budget_s,
            )
        lag = GaugeMetricFamily(
            "prompt_consumer_lag_messages",
            "messages in the partition not yet consumed",
            labels=["topic", "partition"],
        )
        for (topic, partition), value in sorted(running.intake.lag().items()):
            lag.add_metric([topic, str(partition)], value)
        yield lag
