"""The dispatcher's metrics. Names follow Prometheus conventions (``prompt_…_seconds``,
``…_total``); bucket edges sit at the SLO (60 s) and at the millisecond scale of dispatch."""

from __future__ import annotations

from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Histogram

from prompt.channel.messages import FailureKindName

MS_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
E2E_BUCKETS_S = (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 300)
JOB_STATUSES = ("finished", "failed", "late", "expired", "canceled")
FAILURE_KINDS = get_args(FailureKindName)
EVENT_KINDS = ("next-visit", "next-visit-canceled", "image-arrival")
# Known label sets, exported as 0 from the start so rules and dashboards see zeros, not gaps.
DEAD_LETTER_REASONS = (
    "framing", "unknown_schema", "payload", "notification", "invalid", "rejected", "held_full",
)  # fmt: skip
IGNORED = {
    "next-visit": ("duplicate", "no_task", "stale", "not_observation", "canceled"),
    "image-arrival": ("duplicate", "visit_closed", "detector_not_in_task", "next_visit_never_came"),
}


class DispatcherMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.resurrect = Histogram(
            "prompt_resurrect_seconds",
            "next-visit consumed -> visit and its jobs committed",
            buckets=MS_BUCKETS_S,
            registry=r,
        )
        self.dispatch = Histogram(
            "prompt_dispatch_seconds",
            "image-arrival consumed -> job started on the pilot (first attempt)",
            buckets=MS_BUCKETS_S,
            registry=r,
        )
        self.end_to_end = Histogram(
            "prompt_end_to_end_seconds",
            "image arrival -> payload finished",
            buckets=E2E_BUCKETS_S,
            registry=r,
        )
        self.commit = Histogram(
            "prompt_state_commit_seconds",
            "one write-behind transaction",
            buckets=MS_BUCKETS_S,
            registry=r,
        )
        self.consumed = Counter(
            "prompt_events_consumed_total", "events consumed", ["kind"], registry=r
        )
        self.dead_lettered = Counter(
            "prompt_events_dead_lettered_total",
            "events sent to the dead-letter topic",
            ["kind", "reason"],
            registry=r,
        )
        self.raw_header_bytes = Counter(
            "prompt_raw_header_bytes_total",
            "bytes of raws read to resolve bucket notifications (ranged header reads)",
            registry=r,
        )
        self.raw_header_reads = Counter(
            "prompt_raw_header_reads_total",
            "ranged reads of raws' headers for bucket notifications",
            registry=r,
        )
        self.ignored = Counter(
            "prompt_events_ignored_total",
            "events consumed and deliberately not acted on",
            ["kind", "reason"],
            registry=r,
        )
        self.jobs = Counter(
            "prompt_jobs_completed_total", "jobs by final status", ["status"], registry=r
        )
        self.retries = Counter("prompt_job_retries_total", "jobs dispatched again", registry=r)
        self.failures = Counter(
            "prompt_jobs_failed_total",
            "jobs that ended failed, by the kind of their last failure",
            ["kind"],
            registry=r,
        )
        self.completions_published = Counter(
            "prompt_completions_published_total", "completion events on Kafka", registry=r
        )
        self.preload = Counter(
            "prompt_preload_total", "preload hints by cache outcome", ["outcome"], registry=r
        )
        self.pilots_lost = Counter("prompt_pilots_lost_total", "pilots declared lost", registry=r)
        self.dead_letter_failures = Counter(
            "prompt_dead_letter_failures_total",
            "dead letters the broker did not take in time (the event stays in its source topic)",
            registry=r,
        )
        self.rows_rejected = Counter(
            "prompt_state_rows_rejected_total",
            "state rows the database refused for their values (stored without them)",
            ["table"],
            registry=r,
        )
        self.offset_resets = Counter(
            "prompt_offset_resets_total",
            "partitions whose stored position was past the end of the log (topic recreated or"
            " truncated): resumed from the earliest offset",
            ["topic"],
            registry=r,
        )
        self.terms = Counter(
            "prompt_leader_terms_total", "times this process became the leader", registry=r
        )
        self.leadership_lost = Counter(
            "prompt_leadership_lost_total",
            "terms that ended because the lock or the fence was lost",
            registry=r,
        )
        # Children used per event, made once.
        self.consumed_by = {k: self.consumed.labels(k) for k in EVENT_KINDS}
        self.jobs_by = {s: self.jobs.labels(s) for s in JOB_STATUSES}
        for kind in EVENT_KINDS:
            for reason in DEAD_LETTER_REASONS:
                self.dead_lettered.labels(kind, reason)
        for kind, reasons in IGNORED.items():
            for reason in reasons:
                self.ignored.labels(kind, reason)
        for outcome in ("hit", "miss"):
            self.preload.labels(outcome)
        for kind in FAILURE_KINDS:
            self.failures.labels(kind)
