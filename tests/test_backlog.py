"""Jobs queued in a pilot's backlog, through the real broker, database and pilot channel: taken
back when their visit is canceled, and run elsewhere, once, when their pilot is killed."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from prompt.config import Settings
from prompt.dispatcher.engine import JobState
from prompt.events import NextVisit
from prompt.testing.tasks import lsstcam_task_file, sleep_task_file
from prompt.testing.traffic import image_arrivals, next_visit_for
from tests.env import dispatcher_env, group_id, pilot_processes, service_settings

pytestmark = pytest.mark.stack


async def preloaded_visit(env: Any, name: str, *, detectors: int) -> NextVisit:
    """A next-visit, its calibrations preloaded, then the images of its first detectors."""
    nv = next_visit_for(group_id(name), start_utc=time.time())
    await env.sender.next_visit(nv)
    await env.visit_preloaded(nv.group_id)
    await env.sender.images(image_arrivals(nv, range(detectors)))
    return nv


async def each_finished_once(env: Any, nv: NextVisit, *, detectors: int) -> list[dict[str, Any]]:
    """Every detector's job ended once, finished (waited for, then a window for duplicates)."""
    await env.completions.wait_for(detectors, timeout=90)
    await asyncio.sleep(0.5)  # a duplicate would arrive in this window
    records: list[dict[str, Any]] = env.completions.for_group(nv.group_id)
    assert env.completions.duplicates() == 0
    assert sorted(r["detector"] for r in records) == list(range(detectors))
    assert {r["status"] for r in records} == {"finished"}
    return records


async def test_a_canceled_visit_takes_its_jobs_back_from_the_pilots_queue(
    isolated_settings: Settings,
) -> None:
    """One pilot, one slot, a backlog: of three jobs one runs, one waits in the pilot's queue,
    one in the dispatcher's. The cancel ends the last at once and asks the pilot for the
    queued one, which it gives back unstarted; the running one finishes."""
    settings = isolated_settings.with_overrides(backlog_per_pilot=4)
    tasks = sleep_task_file(mean_s=3.0, detectors="0-2")
    async with dispatcher_env(settings, tasks, pilots=1, slots=1) as env:
        pilot = env.pilots[0]
        nv = await preloaded_visit(env, "backlog-cancel", detectors=3)
        await env.until(lambda: len(pilot.queued) == 1 and len(pilot.running) == 1)
        await env.sender.cancel(nv.group_id)
        await env.completions.wait_for(3, timeout=30)
        await asyncio.sleep(0.5)  # a duplicate would arrive in this window
        records = env.completions.for_group(nv.group_id)
        assert env.completions.duplicates() == 0
        assert Counter(r["status"] for r in records) == {"finished": 1, "canceled": 2}
        assert all(r["started"] is None for r in records if r["status"] == "canceled")
        assert not pilot.queued
        assert pilot.jobs_run == 1
        assert not env.book.withdrawing


async def test_a_pilot_killed_with_a_backlog_loses_no_job_and_runs_none_twice(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    """Two ``prompt pilot`` processes of two slots, each holding two jobs queued beyond them:
    one is killed with -9. Its running and queued jobs run on the other, every job ends once."""
    payload = {"kind": "argv", "argv": [sys.executable, "-c", "import time; time.sleep(2)"]}
    tasks = lsstcam_task_file(name="backlog-loss", detectors="0-11", payload=payload)
    settings = service_settings(isolated_settings, backlog_per_pilot=4)
    async with pilot_processes(settings, tasks, tmp_path, pilots=2, slots=2) as env:
        book = env.book
        nv = next_visit_for(group_id("backlog-loss"), start_utc=time.time())
        await env.sender.next_visit(nv)
        await env.sender.images(image_arrivals(nv, range(12)))

        def backlogged() -> list[int]:
            for pilot in book.pilots.pilots.values():
                states = [j.state for j in pilot.running.values()]
                if states.count(JobState.RUNNING) == 2 and states.count(JobState.SENT) == 2:
                    return list(pilot.running)
            return []

        async with asyncio.timeout(30):
            while not backlogged():
                await asyncio.sleep(0.02)
        on_victim = backlogged()
        victim_id = next(p for p in book.pilots.pilots.values() if on_victim[0] in p.running).id
        next(p for p in env.pilots if p.pilot_id == victim_id).kill()
        records = await each_finished_once(env, nv, detectors=12)
    for r in records:
        if r["jobId"] in on_victim:
            assert r["pilot"] != victim_id


async def test_short_jobs_outnumbering_the_workers_wait_in_their_pipes_and_run_once(
    isolated_settings: Settings,
) -> None:
    """One pilot, two slots, 60 no-op jobs: once the first results give their run time, the
    rest go into the pipes of the busy workers, each starts when the one before it ends, and
    every job ends once, finished, with its start after its pilot got it."""
    settings = isolated_settings.with_overrides(backlog_per_pilot=64)
    tasks = sleep_task_file(mean_s=0.0, detectors="0-59")
    async with dispatcher_env(settings, tasks, pilots=1, slots=2) as env:
        pilot = env.pilots[0]
        nv = await preloaded_visit(env, "worker-pipes", detectors=60)
        records = await each_finished_once(env, nv, detectors=60)
        assert all(r["started"] >= r["dispatched"] for r in records)
        assert pilot.pool.queued_behind > 0, "no job waited in a busy worker's pipe"
        assert pilot.jobs_run == 60
