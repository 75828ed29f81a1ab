"""Payload runners, executed inside warm worker processes.

A job message carries ``payload`` (the task's payload spec) and ``fields`` (instrument, group,
detector, uri ...). Three kinds: ``sleep`` (load tests), ``python`` (``module:function`` called
with a JobContext, imported once per worker) and ``argv`` (a command run without a shell; each
template element is formatted with the fields, so a field value is always one literal argument).
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prompt.bounds import LOG_LIMIT
from prompt.channel.messages import FailureKindName, JobResult, job_result
from prompt.extras import import_optional


class PayloadFailed(Exception):
    """The payload ran and reported failure (as opposed to crashing the worker). Retried by
    the dispatcher while attempts remain: the cause may pass."""

    kind: FailureKindName = "payload_error"

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


class PayloadRejected(PayloadFailed):
    """The payload refuses its input for good (a malformed raw, a header it cannot use):
    the job fails at once, with this message, instead of being retried."""

    kind: FailureKindName = "rejected_input"


REJECTED_EXIT_CODES = range(64, 79)
"""argv payloads: sysexits' EX_USAGE..EX_CONFIG (64-78) mean "this input will never work"."""


@dataclass
class JobContext:
    """What a Python payload receives."""

    job: int
    attempt: int
    fields: dict[str, Any]
    params: dict[str, Any]
    calibs: dict[str, dict[str, Any]]
    """calib type -> {"shm": name, "nbytes": n, "meta": {...}}; map with :meth:`calib_buffer`."""
    counts: dict[str, int] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)
    _maps: list[mmap.mmap] = field(default_factory=list)

    def calib_buffer(self, calib_type: str) -> memoryview:
        """The calibration's bytes, mapped read-only from the pilot's shared memory.

        Mapped straight from /dev/shm rather than through ``SharedMemory``: attaching that way
        registers the segment with the resource tracker the workers share with the pilot, and
        the pilot's own unlink would then be reported twice.
        """
        handle = self.calibs[calib_type]
        if not handle["nbytes"]:
            return memoryview(b"")
        fd = os.open(f"/dev/shm/{str(handle['shm']).lstrip('/')}", os.O_RDONLY)
        try:
            mapped = mmap.mmap(fd, handle["nbytes"], access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self._maps.append(mapped)
        return memoryview(mapped)

    def close(self) -> None:
        for mapped in self._maps:
            # An array the payload still holds keeps its mapping alive until it is freed.
            with contextlib.suppress(BufferError):
                mapped.close()
        self._maps.clear()


_ENTRY_CACHE: dict[str, Callable[[JobContext], Any]] = {}


def _entry(spec: str) -> Callable[[JobContext], Any]:
    fn = _ENTRY_CACHE.get(spec)
    if fn is None:
        module, _, name = spec.partition(":")
        fn = getattr(import_optional(module), name)
        _ENTRY_CACHE[spec] = fn
    return fn


def sleep_duration(params: dict[str, Any], rng: random.Random) -> float:
    mean = float(params.get("mean_s", 1.0))
    sigma = float(params.get("sigma", 0.0))
    dist = params.get("distribution", "fixed")
    if dist == "uniform":
        value = rng.uniform(max(0.0, mean - sigma), mean + sigma)
    elif dist == "lognormal" and mean > 0:
        # parameterised so that the mean of the distribution is mean_s
        mu = math.log(mean) - sigma * sigma / 2
        value = rng.lognormvariate(mu, sigma)
    else:
        value = mean
    return min(value, float(params.get("max_s", 600.0)))


_FIXED = random.Random(0)
"""Passed for a fixed sleep that cannot fail: ``sleep_duration`` does not draw from it."""


def run_sleep(ctx: JobContext) -> None:
    params = ctx.params
    fail_rate = float(params.get("fail_rate", 0.0))
    # Seeding a generator costs ~8 us of the worker's ~30 us per no-op job: only when used.
    drawn = fail_rate > 0 or params.get("distribution", "fixed") != "fixed"
    rng = random.Random(ctx.job * 1000 + ctx.attempt) if drawn else _FIXED
    duration = sleep_duration(params, rng)
    time.sleep(duration)
    ctx.stages["sleep"] = duration
    if fail_rate > 0 and rng.random() < fail_rate:
        raise PayloadFailed(
            f"sleep payload failed on purpose (fail_rate {ctx.params['fail_rate']})"
        )


def format_argv(template: list[str], fields: dict[str, Any]) -> list[str]:
    """Each element formatted on its own: values never split into or join other arguments."""
    return [part.format_map(fields) for part in template]


def run_argv(ctx: JobContext, payload: dict[str, Any], timeout_s: float) -> str:
    argv = format_argv(payload["argv"], ctx.fields)
    env = {**os.environ, **payload.get("env", {})}
    env["PROMPT_JOB"] = str(ctx.job)
    try:
        proc = subprocess.run(
            argv,
            shell=False,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except FileNotFoundError as exc:
        raise PayloadFailed(f"command not found: {argv[0]!r}") from exc
    except subprocess.TimeoutExpired as exc:
        raise PayloadFailed(f"command timed out after {timeout_s:.0f} s") from exc
    log = (proc.stdout + proc.stderr)[-LOG_LIMIT:].decode("utf-8", "replace")
    if proc.returncode != 0:
        tail = proc.stderr[-500:].decode("utf-8", "replace").strip()
        failed = PayloadRejected if proc.returncode in REJECTED_EXIT_CODES else PayloadFailed
        raise failed(f"exit status {proc.returncode}: {tail}", log=log)
    return log


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job; always returns a result (errors included, as a ``JobResult``), never
    raises. ``alerts`` holds the encoded alert packets a python payload returned; the pilot
    publishes them before it reports the job finished."""
    payload = job["payload"]
    ctx = JobContext(
        job=job["job"],
        attempt=job["attempt"],
        fields=job["fields"],
        params=payload.get("params", {}),
        calibs=job.get("calibs", {}),
    )
    started = time.time()
    log = ""
    error: str | None = None
    failure: FailureKindName | None = None
    alerts: list[bytes] = []
    try:
        kind = payload["kind"]
        if kind == "sleep":
            run_sleep(ctx)
        elif kind == "python":
            out = _entry(payload["entry"])(ctx)
            if isinstance(out, dict):
                ctx.counts.update(out.get("counts", {}))
                ctx.stages.update(out.get("stages", {}))
                log = str(out.get("log", ""))
                alerts = list(out.get("alerts", []))
        elif kind == "argv":
            log = run_argv(ctx, payload, float(job.get("timeout_s", 600.0)))
        else:
            raise PayloadRejected(f"unknown payload kind {kind!r}")
    except PayloadFailed as exc:
        error, failure = str(exc), exc.kind
        log = exc.log or log
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        ctx.close()
    result: JobResult = job_result(
        started=started, error=error, failure=failure, counts=ctx.counts, stages=ctx.stages,
        log=log,
    )  # fmt: skip
    return {**result, "alerts": alerts if error is None else []}
