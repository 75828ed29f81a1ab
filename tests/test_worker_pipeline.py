"""Jobs queued in a busy worker's pipe (``WorkerPool.submit_behind``), with real workers: they
run in order without a hand-off through the pilot, and a worker that dies or times out gives
the jobs behind its running one back unstarted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from prompt.pilot.workers import WorkerPool

CRASH = {"kind": "python", "entry": "prompt.pilot.builtin:flaky", "params": {"crash_attempts": [1]}}


def job(job_id: int, payload: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"job": job_id, "attempt": 1, "payload": payload, "fields": fields, "timeout_s": 10}


def sleep(seconds: float) -> dict[str, Any]:
    return {"kind": "sleep", "params": {"mean_s": seconds}}


@dataclass
class Seen:
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)
    returned: list[int] = field(default_factory=list)
    replacements_ready: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def result(self, job_id: int, result: dict[str, Any]) -> None:
        self.results[job_id] = result
        self.order.append(job_id)
        self.changed.set()

    def ready(self) -> None:
        self.replacements_ready += 1
        self.changed.set()

    def back(self, job_id: int) -> None:
        self.returned.append(job_id)
        self.changed.set()

    async def until(self, done: Any, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def one_worker() -> AsyncIterator[tuple[WorkerPool, Seen]]:
    seen = Seen()
    pool = WorkerPool(
        1, seen.result, on_returned=seen.back, on_ready=seen.ready, lookahead_s=1.0, depth=4
    )
    await pool.start()
    try:
        yield pool, seen
    finally:
        await pool.stop()


async def test_jobs_behind_a_running_one_run_in_order_on_the_same_worker(
    one_worker: tuple[WorkerPool, Seen],
) -> None:
    pool, seen = one_worker
    pool.submit(1, job(1, sleep(0.2)), 10, est_s=0.01)
    for i in (2, 3, 4):
        worker = pool.behind(0.01)
        assert worker is not None, "a short job may wait behind short ones"
        pool.submit_behind(worker, i, job(i, sleep(0.01)), 10, 0.01)
    assert pool.behind(0.01) is None, "the worker holds depth=4 jobs"
    await seen.until(lambda: len(seen.results) == 4)
    assert seen.order == [1, 2, 3, 4]
    assert all(r["ok"] for r in seen.results.values())
    starts = [seen.results[i]["started"] for i in (1, 2, 3, 4)]
    ends = [seen.results[i]["finished"] for i in (1, 2, 3, 4)]
    assert all(ends[i] <= starts[i + 1] for i in range(3)), "one at a time"
    assert pool.idle == 1


async def test_no_job_waits_behind_one_of_unknown_or_long_run_time(
    one_worker: tuple[WorkerPool, Seen],
) -> None:
    pool, seen = one_worker
    assert pool.behind(0.01) is None, "nothing is busy: jobs go to idle workers"
    pool.submit(1, job(1, sleep(0.3)), 10, est_s=None)
    assert pool.behind(0.01) is None, "the running job's run time is not known"
    assert pool.behind(None) is None
    await seen.until(lambda: 1 in seen.results)
    pool.submit(2, job(2, sleep(0.3)), 10, est_s=2.0)
    assert pool.behind(0.01) is None, "2 s ahead is past the 1 s lookahead"
    await seen.until(lambda: 2 in seen.results)


async def test_a_timeout_gives_back_the_jobs_behind_unstarted(
    one_worker: tuple[WorkerPool, Seen],
) -> None:
    pool, seen = one_worker
    pool.submit(1, job(1, sleep(30)), 0.5, est_s=0.01)  # claims to be short, hangs
    for i in (2, 3):
        worker = pool.behind(0.01)
        assert worker is not None
        pool.submit_behind(worker, i, job(i, sleep(0.01)), 10, 0.01)
    await seen.until(lambda: 1 in seen.results and len(seen.returned) == 2)
    assert "timed out" in seen.results[1]["error"]
    assert seen.returned == [2, 3] and set(seen.results) == {1}, "2 and 3 never ran"
    assert pool.respawns == 1
    await seen.until(lambda: seen.replacements_ready == 1)  # the pilot starts its backlog here
    assert pool.idle == 1
    pool.submit(2, job(2, sleep(0.01)), 10)
    await seen.until(lambda: 2 in seen.results)
    assert seen.results[2]["ok"]


async def test_a_crash_ends_the_running_job_only_and_keeps_results_before_it(
    one_worker: tuple[WorkerPool, Seen],
) -> None:
    pool, seen = one_worker
    pool.submit(1, job(1, sleep(0.2)), 10, est_s=0.01)
    for i, payload in ((2, sleep(0)), (3, CRASH), (4, sleep(0))):
        worker = pool.behind(0.01)
        assert worker is not None
        pool.submit_behind(worker, i, job(i, payload, detector=0), 10, 0.01)
    await seen.until(lambda: len(seen.results) == 3 and seen.returned)
    assert seen.results[1]["ok"] and seen.results[2]["ok"], "results written before the crash"
    assert "worker process died" in seen.results[3]["error"]
    assert seen.returned == [4]


async def test_a_job_larger_than_the_pipe_buffer_waits_behind_whole(
    one_worker: tuple[WorkerPool, Seen],
) -> None:
    pool, seen = one_worker
    big = "x" * (1 << 20)  # a pipe holds 64 KiB: written over several wake-ups
    pool.submit(1, job(1, sleep(0.2)), 10, est_s=0.01)
    for i in (2, 3):
        worker = pool.behind(0.01)
        assert worker is not None
        spec = {"kind": "python", "entry": "prompt.pilot.builtin:flaky", "params": {}}
        pool.submit_behind(worker, i, job(i, spec, detector=0, blob=big), 10, 0.01)
    await seen.until(lambda: len(seen.results) == 3)
    assert [seen.results[i]["ok"] for i in (1, 2, 3)] == [True, True, True]
