"""Pilot pieces without a dispatcher: cache, argv templating, payload runners, workers."""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from prompt.pilot.cache import CacheEntry, CacheKey, CalibrationCache
from prompt.pilot.payloads import format_argv, run_job, sleep_duration
from prompt.pilot.workers import WorkerPool


def test_cache_is_lru_by_bytes() -> None:
    cache = CalibrationCache(capacity_bytes=300)
    keys = [CacheKey("LSSTCam", d, "r_57", "flat", "202505") for d in range(4)]
    for key in keys[:3]:
        cache.put(CacheEntry(key, 100, None))
    assert cache.get(keys[0]) is not None  # 0 becomes most recent
    cache.put(CacheEntry(keys[3], 100, None))
    assert keys[1] not in cache and {keys[0], keys[2], keys[3]} <= set(cache.keys())
    assert cache.used == 300 and cache.stats.evictions == 1
    assert cache.summary() == [
        ["LSSTCam", 0, "r_57"],
        ["LSSTCam", 2, "r_57"],
        ["LSSTCam", 3, "r_57"],
    ]


def test_argv_fields_stay_single_literal_arguments() -> None:
    fields = {"visit": "x; rm -rf / $(touch /tmp/pwned) `id`", "detector": 5}
    argv = format_argv(["echo", "visit={visit} and detector={detector:03d}"], fields)
    assert argv == ["echo", "visit=x; rm -rf / $(touch /tmp/pwned) `id` and detector=005"]


def test_sleep_distributions() -> None:
    rng = random.Random(1)
    assert sleep_duration({"mean_s": 0.5}, rng) == 0.5
    uni = [
        sleep_duration({"distribution": "uniform", "mean_s": 1, "sigma": 0.5}, rng)
        for _ in range(500)
    ]
    assert min(uni) >= 0.5 and max(uni) <= 1.5
    logn = [
        sleep_duration({"distribution": "lognormal", "mean_s": 1, "sigma": 0.5}, rng)
        for _ in range(4000)
    ]
    assert 0.9 < sum(logn) / len(logn) < 1.1  # parameterised by its mean
    capped = {"distribution": "lognormal", "mean_s": 1, "sigma": 3, "max_s": 2}
    assert max(sleep_duration(capped, rng) for _ in range(200)) <= 2


def _job(payload: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"job": 1, "attempt": 1, "payload": payload, "fields": fields, "timeout_s": 10}


def test_argv_payload_runs_without_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = f"; touch {marker}; $(touch {marker}) `touch {marker}`"
    script = "import sys; print(repr(sys.argv[1:]))"
    result = run_job(
        _job({"kind": "argv", "argv": [sys.executable, "-c", script, "{visit}"]}, visit=hostile)
    )
    assert result["ok"], result["error"]
    assert repr([hostile]) in result["log"]
    assert not marker.exists()


def test_failures_are_reported_not_raised() -> None:
    missing = run_job(_job({"kind": "argv", "argv": ["/nonexistent/pipetask"]}))
    assert not missing["ok"] and "command not found" in missing["error"]
    status = run_job(_job({"kind": "argv", "argv": [sys.executable, "-c", "raise SystemExit(3)"]}))
    assert not status["ok"] and "exit status 3" in status["error"]
    flaky = run_job(
        _job({"kind": "python", "entry": "prompt.pilot.builtin:flaky",
              "params": {"fail_attempts": [1]}}, detector=1)
    )  # fmt: skip
    assert not flaky["ok"] and "injected failure on attempt 1" in flaky["error"]


async def test_worker_pool_timeouts_and_crashes_respawn_workers() -> None:
    results: dict[int, dict[str, Any]] = {}
    done = asyncio.Event()

    def on_result(job: int, result: dict[str, Any]) -> None:
        results[job] = result
        if len(results) == 3:
            done.set()

    pool = WorkerPool(2, on_result)
    await pool.start()
    try:
        pool.submit(1, _job({"kind": "sleep", "params": {"mean_s": 5}}), timeout_s=0.3)
        crash = {"kind": "python", "entry": "prompt.pilot.builtin:flaky",
                 "params": {"crash_attempts": [1]}}  # fmt: skip
        pool.submit(2, _job(crash, detector=0), timeout_s=5)
        async with asyncio.timeout(20):
            while pool.idle < 2:
                await asyncio.sleep(0.05)
        pool.submit(3, _job({"kind": "sleep", "params": {"mean_s": 0.01}}), timeout_s=5)
        async with asyncio.timeout(20):
            await done.wait()
    finally:
        await pool.stop()
    assert "timed out" in results[1]["error"]
    assert "worker process died" in results[2]["error"]
    assert results[3]["ok"], "replacement workers take new jobs"
    assert pool.respawns == 2


@pytest.mark.parametrize("kind", ["sleep"])
def test_run_job_records_stages(kind: str) -> None:
    result = run_job(_job({"kind": kind, "params": {"mean_s": 0.01}}))
    assert result["ok"] and result["stages"]["sleep"] == 0.01
    assert result["finished"] >= result["started"]


def test_a_job_goes_to_its_pilot_with_room_in_its_backlog_else_where_calibrations_are() -> None:
    from types import SimpleNamespace

    from prompt.dispatcher.engine.pilots import PilotRegistry, PilotState

    key = ("LSSTCam", 94, "r_57")
    holder = PilotState("holder", 1, frozenset(), "", connected=True, cache={key})
    holder.running = {1: None}  # type: ignore[dict-item]  # busy
    cold = PilotState("cold", 4, frozenset(), "", connected=True)
    pilots = PilotRegistry()
    pilots.pilots = {"holder": holder, "cold": cold}
    job: Any = SimpleNamespace(pilot_id="holder", tried=set(), cache_key=key)

    assert pilots.choose_for_run(job, frozenset(), backlog=1) is holder  # queued there
    warm = PilotState("warm", 4, frozenset(), "", connected=True, cache={key})
    pilots.pilots["warm"] = warm
    assert pilots.choose_for_run(job, frozenset()) is warm
    del pilots.pilots["warm"]
    assert pilots.choose_for_run(job, frozenset()) is cold
    holder.connected = False
    assert pilots.choose_for_run(job, frozenset(), backlog=1) is cold


def test_a_push_of_an_attempt_whose_result_was_acked_runs_again() -> None:
    """After a failover the new leader may ack (and drop) a result of a job it still has
    waiting for its image, then push that same attempt: the pilot must run it again (it used
    to ignore the push as a repeat, and the job waited until the next failover)."""
    from prompt.pilot import Pilot, PilotConfig, SyntheticCalibrations

    pilot = Pilot(
        PilotConfig(dispatcher="127.0.0.1:1", token="t", pilot_id="p", slots=1),
        SyntheticCalibrations(nbytes=16, load_s=0.0),
    )
    job = {"t": "job", "job": 7, "attempt": 1}
    pilot.unacked[(7, 1)] = {"t": "finished", "job": 7, "attempt": 1, "ok": True}
    pilot._on_ack({"t": "ack", "job": 7, "attempt": 1})
    assert pilot.unacked == {}
    pilot._on_job(job)  # the pool is not started: no free slot, so it waits in the queue
    assert list(pilot.queued) == [job]
    pilot._on_job(job)  # a repeat of a push it holds is still ignored
    assert list(pilot.queued) == [job]
