"""A pilot's own metrics, read from the pilot when Prometheus scrapes it (nothing on the job
path updates them). Names differ from the dispatcher's ``prompt_pilots`` / ``prompt_pilot_slots``
/ ``prompt_pilot_slots_busy``, which sum all connected pilots as the dispatcher sees them: a
query over both scrape jobs never adds the same thing twice."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    import asyncio

    from prompt.pilot.agent import Pilot

PILOT_METRICS = (
    "prompt_pilot_connected",
    "prompt_pilot_draining",
    "prompt_pilot_workers",
    "prompt_pilot_workers_alive",
    "prompt_pilot_workers_busy",
    "prompt_pilot_jobs_queued",
    "prompt_pilot_results_unacknowledged",
    "prompt_pilot_cache_bytes",
    "prompt_pilot_cache_capacity_bytes",
    "prompt_pilot_cache_entries",
    "prompt_pilot_jobs_run_total",
    "prompt_pilot_worker_respawns_total",
    "prompt_pilot_jobs_queued_in_workers_total",
    "prompt_pilot_cache_hits_total",
    "prompt_pilot_cache_misses_total",
    "prompt_pilot_cache_loads_total",
    "prompt_pilot_cache_evictions_total",
    "prompt_pilot_cache_loaded_bytes_total",
)
"""Every name this collector exports (as scraped, counters with their ``_total``)."""


class PilotCollector(Collector):
    def __init__(self, pilot: Pilot, stop: asyncio.Event) -> None:
        self._pilot = pilot
        self._stop = stop

    def collect(self) -> Iterable[Any]:
        pilot = self._pilot
        pool, cache = pilot.pool, pilot.cache
        draining = pilot.draining or self._stop.is_set()
        gauges: list[tuple[str, str, float]] = [
            ("connected", "1 while registered with a dispatcher", pilot.connected.is_set()),
            ("draining", "1 once stopping: no new jobs, running ones finish", draining),
            ("workers", "job slots (warm worker processes) configured", pool.size),
            ("workers_alive", "worker processes running", pool.alive()),
            ("workers_busy", "slots running a job or loading its calibrations",
             pool.size - pilot.free_slots),
            ("jobs_queued", "jobs received, waiting for a free slot", len(pilot.queued)),
            ("results_unacknowledged", "results not yet stored by the dispatcher",
             len(pilot.unacked)),
            ("cache_bytes", "calibration cache in use (shared memory)", cache.used),
            ("cache_capacity_bytes", "calibration cache limit (--cache-mb)", cache.capacity),
            ("cache_entries", "calibrations and templates held", len(cache)),
        ]  # fmt: skip
        for name, doc, value in gauges:
            yield GaugeMetricFamily(f"prompt_pilot_{name}", doc, value=float(value))
        stats = cache.stats
        counters: list[tuple[str, str, float]] = [
            ("jobs_run", "jobs whose payload ran to a result", pilot.jobs_run),
            ("worker_respawns", "workers replaced after a crash or a timeout", pool.respawns),
            (
                "jobs_queued_in_workers",
                "short jobs queued behind a busy worker's running job (--worker-lookahead-ms)",
                pool.queued_behind,
            ),
            ("cache_hits", "cache look-ups that found the entry", stats.hits),
            ("cache_misses", "cache look-ups that did not", stats.misses),
            ("cache_loads", "entries read from the calibration store", stats.loads),
            ("cache_evictions", "entries dropped to stay within the limit", stats.evictions),
            ("cache_loaded_bytes", "bytes read from the calibration store", stats.loaded_bytes),
        ]
        for name, doc, value in counters:
            yield CounterMetricFamily(f"prompt_pilot_{name}", doc, value=float(value))
