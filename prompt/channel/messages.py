"""The shape of every pilot-channel message (orjson on the wire), and the one job result.

Messages from a peer are checked where they are read; these types say what the code may rely
on after that. ``JobResult`` is what a worker returns for one job, built only by
``job_result``: by the payload runner, and by the pilot for the failures it reports itself.
"""

from __future__ import annotations

import time
from typing import Any, Literal, NotRequired, TypedDict

from prompt.bounds import bound_counts, bound_error, bound_log, bound_stages

FailureKindName = Literal[
    "pilot_lost", "timeout", "worker_crashed", "payload_error", "rejected_input",
    "missing_calibration", "calibration_unavailable", "delivery_failed", "unsendable",
]  # fmt: skip
"""See ``prompt.dispatcher.engine.outcomes.FailureKind``: which of these a retry can cure."""


class PreloadItem(TypedDict):
    job: int
    instrument: str
    detector: int
    filter: str
    day_obs: int
    group: str
    ra: float
    dec: float
    valid_until: float


class Welcome(TypedDict):
    t: Literal["welcome"]
    heartbeat_s: float
    scheduling: Literal["push", "poll"]
    poll_s: NotRequired[float]
    """With ``poll`` scheduling: how often the pilot asks for work."""


class Preload(TypedDict):
    t: Literal["preload"]
    items: list[PreloadItem]


class JobMessage(TypedDict):
    """A job to run. It may come while every slot is busy: it then waits in the pilot's
    queue, which starts the lowest ``rank`` first when a worker frees, until the dispatcher
    withdraws it."""

    t: Literal["job"]
    job: int
    attempt: int
    payload: dict[str, Any]
    fields: dict[str, Any]
    timeout_s: float
    deadline: float | None
    rank: NotRequired[float]
    """The dispatcher's order (smaller first: the deadline, or the arrival with ``fifo``)."""


class Withdraw(TypedDict):
    """Give this attempt back if it has not started; answered with ``Withdrawn``."""

    t: Literal["withdraw"]
    job: int
    attempt: int


class Withdrawn(TypedDict):
    """True: the attempt was still queued and is dropped (it will never run here); False: it
    has started (or is not here), and runs or ends as any other."""

    t: Literal["withdrawn"]
    job: int
    attempt: int
    withdrawn: bool


class Ack(TypedDict):
    t: Literal["ack"]
    job: int
    attempt: int


class Register(TypedDict):
    t: Literal["register"]
    pilot: str
    token: str
    slots: int
    labels: list[str]
    host: str
    pid: int
    cache: list[list[Any]]
    running: list[list[int]]
    draining: bool


class Heartbeat(TypedDict):
    t: Literal["heartbeat"]
    running: list[list[int]]
    free: int
    draining: bool
    cache: list[list[Any]]
    cache_stats: dict[str, Any]


class Started(TypedDict):
    t: Literal["started"]
    job: int
    attempt: int
    at: float


class JobResult(TypedDict):
    ok: bool
    error: str | None
    failure: FailureKindName | None
    started: float
    finished: float
    counts: dict[str, int]
    stages: dict[str, float]
    log: str


class Finished(JobResult):
    t: Literal["finished"]
    job: int
    attempt: int
    cache_hit: bool


def job_result(
    *,
    started: float,
    error: object = None,
    failure: FailureKindName | None = None,
    counts: object = None,
    stages: object = None,
    log: object = "",
    finished: float | None = None,
) -> JobResult:
    """A job's result, bounded and clean: what every path that ends a job on a pilot builds."""
    return {
        "ok": error is None,
        "error": None if error is None else bound_error(error),
        "failure": None if error is None else (failure or "payload_error"),
        "started": started,
        "finished": time.time() if finished is None else finished,
        "counts": bound_counts(counts),
        "stages": bound_stages(stages),
        "log": bound_log(log),
    }
