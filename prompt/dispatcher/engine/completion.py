"""The completion record of a job, as published on the completion topic."""

from __future__ import annotations

from typing import Any

from prompt.bounds import bound_counts, bound_stages
from prompt.dispatcher.engine.model import Job
from prompt.events import AvroCodec

MESSAGE_LIMIT = 1_000_000
"""Bytes a completion may take: under Kafka's default ``message.max.bytes`` (1 MB) with room
for the key, headers and batch overhead."""


def completion_record(job: Job) -> dict[str, Any]:
    visit = job.visit
    result = job.result or {}
    latency = None
    if job.finished is not None and job.image_arrived is not None:
        latency = job.finished - job.image_arrived
    dispatch_ms = None
    if job.started is not None and job.image_consumed is not None:
        dispatch_ms = (job.started - job.image_consumed) * 1e3
    run_s = None
    if job.finished is not None and job.started is not None:
        run_s = job.finished - job.started
    assert job.completed is not None
    return {
        "instrument": visit.nv.instrument,
        "groupId": visit.nv.group_id,
        "detector": job.detector,
        "jobId": job.id,
        "task": visit.task.name,
        "taskVersion": visit.task.version,
        "status": job.state.value,
        "attempt": job.attempt,
        "pilot": job.pilot_id if job.attempt else None,
        "cacheHit": job.cache_hit,
        "error": job.error,
        "failureKind": job.failure.value if job.failure else None,
        "nextVisitReceived": visit.received_at,
        "preloaded": job.preloaded,
        "imageArrived": job.image_arrived,
        "imageConsumed": job.image_consumed,
        "dispatched": job.dispatched,
        "started": job.started,
        "finished": job.finished,
        "completed": job.completed,
        "deadline": job.deadline,
        "latencySeconds": latency,
        "dispatchMs": dispatch_ms,
        "runSeconds": run_s,
        "counts": bound_counts(result.get("counts")),
        "stageSeconds": bound_stages(result.get("stages")),
    }


def encode_completion(codec: AvroCodec, job: Job, limit: int = MESSAGE_LIMIT) -> bytes:
    """The job's completion event, guaranteed to fit in ``limit`` bytes: its parts are
    bounded at the source, and should it still not fit, the error is cut further and the
    per-stage details are left out (said in the error)."""
    record = completion_record(job)
    value = codec.encode(record)
    if len(value) <= limit:
        return value
    record.update(counts={}, stageSeconds={})
    record["error"] = ((record["error"] or "")[:1024] + " [completion cut to fit]").strip()
    return codec.encode(record)
