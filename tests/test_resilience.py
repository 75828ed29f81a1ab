"""Pilots and the dispatcher dying at the worst moments: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from prompt.config import Settings
from prompt.dispatcher.engine import JobState
from prompt.store import connect
from prompt.tasks.spec import Selectors
from prompt.testing.processes import InProcessDispatcher
from prompt.testing.tasks import apply_task_file, sleep_task_file
from prompt.testing.traffic import CompletionCollector, EventSender, image_arrivals, next_visit_for
from tests.env import dispatcher_env, group_id, pilot_processes, served, service_settings

pytestmark = pytest.mark.stack


async def test_pilot_killed_mid_job_is_redispatched(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    settings = service_settings(isolated_settings)
    tasks = sleep_task_file(mean_s=1.5, detectors="0-19")
    async with pilot_processes(settings, tasks, tmp_path) as env:
        d = env.book
        nv = next_visit_for(group_id("kill"), start_utc=time.time())
        await env.sender.next_visit(nv)
        await env.sender.images(image_arrivals(nv, range(20)))
        await env.until_running(20)
        victim = next(p for p in env.pilots if d.pilots.pilots[p.pilot_id].running)
        on_victim = set(d.pilots.pilots[victim.pilot_id].running)
        victim.kill()
        await env.completions.wait_for(20, timeout=60)
        await asyncio.sleep(0.5)
    completions = env.completions
    assert completions.duplicates() == 0
    assert Counter(r["status"] for r in completions.records) == {"finished": 20}
    for r in completions.records:
        if r["jobId"] in on_victim:
            assert r["attempt"] == 2 and r["pilot"] != victim.pilot_id
        else:
            assert r["attempt"] == 1
    assert env.running.metrics.pilots_lost._value.get() == 1


async def test_reconnecting_pilot_keeps_its_jobs(isolated_settings: Settings) -> None:
    async with dispatcher_env(isolated_settings, sleep_task_file(mean_s=1.0, detectors="0-7"),
                              pilots=1, slots=8) as env:  # fmt: skip
        nv = next_visit_for(group_id("blip"), start_utc=time.time())
        await env.sender.next_visit(nv)
        await env.sender.images(image_arrivals(nv, range(8)))
        d = env.book
        await env.until(lambda: sum(j.state is JobState.RUNNING for j in d.jobs.values()) == 8)
        channel = env.running.runtime.channels["pilot-0"]
        channel.abort()  # the network drops the connection; the pilot reconnects
        await env.completions.wait_for(8)
        await asyncio.sleep(0.5)
    assert Counter((r["status"], r["attempt"]) for r in env.completions.records) == {
        ("finished", 1): 8
    }
    assert env.pilots[0].jobs_run == 8, "no job ran twice"
    assert env.running.metrics.pilots_lost._value.get() == 0


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_dispatcher_restart_between_next_visit_and_images(
    isolated_settings: Settings, tmp_path: Path, how: str
) -> None:
    settings = service_settings(isolated_settings, heartbeat_timeout_s=3.0)
    await apply_task_file(settings, sleep_task_file(mean_s=0.05))
    async with (
        served(settings, tmp_path) as env,
        EventSender(settings) as sender,
        CompletionCollector(settings) as completions,
    ):
        nv = next_visit_for(group_id(how), start_utc=time.time())
        await sender.next_visit(nv)
        conn = await connect(settings.database_url or "")
        try:
            async with asyncio.timeout(20):
                while await conn.fetchval("SELECT count(*) FROM jobs") < 189:
                    await asyncio.sleep(0.05)
        finally:
            await conn.close()
        env.stop(how)
        await sender.images(image_arrivals(nv, range(189)))
        await env.start()
        await completions.wait_for(189, timeout=90)
        await asyncio.sleep(1.0)
        assert completions.duplicates() == 0
        assert Counter(r["status"] for r in completions.records) == {"finished": 189}


async def test_dispatcher_killed_while_jobs_run(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    """kill -9 with jobs on pilots: pilots reconnect to the new dispatcher, claim their jobs and
    deliver the results they kept; each job completes once, on its first attempt."""
    settings = service_settings(isolated_settings, heartbeat_timeout_s=5.0)
    await apply_task_file(settings, sleep_task_file(mean_s=2.0, detectors="0-31"))
    async with (
        served(settings, tmp_path) as env,
        EventSender(settings) as sender,
        CompletionCollector(settings) as completions,
    ):
        nv = next_visit_for(group_id("k9run"), start_utc=time.time())
        await sender.next_visit(nv)
        await sender.images(image_arrivals(nv, range(32)))
        async with asyncio.timeout(20):
            while (await env.service.status())["jobs_by_state"].get("running", 0) < 32:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # let the write-behind commit the running state
        env.stop("sigkill")
        await env.start()
        await completions.wait_for(32, timeout=90)
        await asyncio.sleep(1.0)
        assert completions.duplicates() == 0
        assert Counter((r["status"], r["attempt"]) for r in completions.records) == {
            ("finished", 1): 32
        }


async def test_recovery_applies_held_rows_and_keeps_only_those_still_waiting(
    isolated_settings: Settings,
) -> None:
    settings = service_settings(isolated_settings)
    await apply_task_file(settings, sleep_task_file(mean_s=0.01, detectors="0-3"))
    nv = next_visit_for(group_id("orphan"), start_utc=time.time())
    async with InProcessDispatcher(settings) as running, EventSender(settings) as sender:
        await sender.next_visit(nv)
        async with asyncio.timeout(20):
            while not running.engine.book.visits:
                await asyncio.sleep(0.02)
    conn = await connect(settings.database_url or "")
    try:
        # An image row written behind after its visit was resurrected, and a real early one.
        for group in (nv.group_id, "not-yet-announced"):
            await conn.execute(
                "INSERT INTO held_images VALUES ('LSSTCam', $1, 2, 0, 's3://b/k', $2, $2)",
                group,
                time.time(),
            )
        async with InProcessDispatcher(settings) as running:
            visit = next(iter(running.engine.book.visits.values()))
            assert visit.jobs[2].snaps_mask == 1, "the orphaned row's image was applied"
            assert running.engine.book.held.keys() == [("LSSTCam", "not-yet-announced")]
        rows = await conn.fetch("SELECT group_id FROM held_images")
        assert [r["group_id"] for r in rows] == ["not-yet-announced"]
    finally:
        await conn.close()


async def test_images_waiting_in_the_topic_during_an_outage_are_not_expired(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    """The dispatcher is down while a visit's images land and its expiry time passes. On its
    return it first waits for a pilot that held a job (up to the heartbeat timeout) before it
    reads images: nothing may be expired in that time, since the images are in the topic."""
    settings = service_settings(isolated_settings, heartbeat_timeout_s=4.0)
    tasks = sleep_task_file(mean_s=0.05, detectors="0-19", image_timeout_s=0.5)
    long_job = sleep_task_file(mean_s=5.0, detectors="0", name="long", max_attempts=3)
    selected = long_job.tasks[0].model_copy(update={"selectors": Selectors(filters=["g"])})
    tasks.tasks.insert(0, selected)
    await apply_task_file(settings, tasks)
    async with (
        served(settings, tmp_path, pilots=2) as env,
        EventSender(settings) as sender,
        CompletionCollector(settings) as completions,
    ):
        holder = next_visit_for(group_id("holder"), start_utc=time.time(), filters="g_6")
        await sender.next_visit(holder)
        await sender.images(image_arrivals(holder, range(1)))
        nv = next_visit_for(group_id("outage"), start_utc=time.time(), duration=0.2)
        await sender.next_visit(nv)
        conn = await connect(settings.database_url or "")
        try:
            async with asyncio.timeout(20):
                while (
                    await conn.fetchval("SELECT count(*) FROM jobs WHERE state = 'running'") < 1
                    or await conn.fetchval("SELECT count(*) FROM jobs") < 21
                ):
                    await asyncio.sleep(0.05)
            pilot_id = await conn.fetchval("SELECT pilot_id FROM jobs WHERE state = 'running'")
        finally:
            await conn.close()
        env.stop("sigkill")
        next(p for p in env.pilots if p.pilot_id == pilot_id).kill()
        await sender.images(image_arrivals(nv, range(20)))
        await asyncio.sleep(1.5)  # the visit's expiry time (start + 2 x 0.2 + 0.5 s) passes
        await env.start()
        await completions.wait_for(20, timeout=60)
        records = completions.for_group(nv.group_id)
        assert Counter(r["status"] for r in records) == {"finished": 20}
