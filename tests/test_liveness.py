"""Pilots that stall, frames that do not fit, multi-snap state across restarts, and readiness
that tells the truth. Real broker, database, dispatcher and pilot processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from prompt.config import Settings
from prompt.events import ImageArrival
from prompt.store import connect
from prompt.testing.processes import start_pilot
from prompt.testing.tasks import apply_task_file, lsstcam_task_file, sleep_task_file
from prompt.testing.traffic import CompletionCollector, EventSender, image_arrivals, next_visit_for
from tests.env import dispatcher_env, group_id, pilot_processes, served, service_settings
from tests.faults import wait_db

pytestmark = pytest.mark.stack


async def test_a_stalled_pilot_is_dropped_reconnects_and_gets_work_again(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    """SIGSTOP past the heartbeat timeout: the pilot is declared lost *and disconnected*, its
    jobs run elsewhere; once it continues it registers again and is given new work; its
    results for the superseded attempts are fenced, so each job completes once."""
    settings = service_settings(isolated_settings)
    tasks = sleep_task_file(mean_s=2.0, detectors="0-19")
    async with pilot_processes(settings, tasks, tmp_path) as env:
        d, running, sender, completions = env.book, env.running, env.sender, env.completions
        nv = next_visit_for(group_id("stall"), start_utc=time.time())
        await sender.next_visit(nv)
        await sender.images(image_arrivals(nv, range(20)))
        await env.until_running(20)
        victim = env.pilots[0]
        os.killpg(victim.proc.pid, signal.SIGSTOP)
        async with asyncio.timeout(20):
            while running.metrics.pilots_lost._value.get() < 1:
                await asyncio.sleep(0.02)
        assert victim.pilot_id not in d.pilots.pilots
        os.killpg(victim.proc.pid, signal.SIGCONT)
        async with asyncio.timeout(20):  # it notices the closed connection and registers
            while victim.pilot_id not in {p.id for p in d.pilots.connected()}:
                await asyncio.sleep(0.05)
        await completions.wait_for(20, timeout=60)
        nv2 = next_visit_for(group_id("after-stall"), start_utc=time.time())
        await sender.next_visit(nv2)
        await sender.images(image_arrivals(nv2, range(20)))
        await completions.wait_for(40, timeout=60)
        await asyncio.sleep(1.0)  # late results of the stalled attempts would land now
    assert completions.duplicates() == 0
    assert Counter(r["status"] for r in completions.records) == {"finished": 40}
    second = completions.for_group(nv2.group_id)
    assert any(r["pilot"] == victim.pilot_id for r in second), "the pilot got work again"


async def test_a_job_frame_over_the_limit_fails_at_once_and_the_pilot_stays(
    isolated_settings: Settings,
) -> None:
    tasks = lsstcam_task_file(
        name="huge-frame", detectors="0-1", max_attempts=3,
        payload={"kind": "python", "entry": "prompt.pilot.builtin:flaky",
                 "params": {"blob": "x" * (9 * 1024 * 1024)}},
    )  # fmt: skip
    async with dispatcher_env(isolated_settings, tasks, pilots=2) as env:
        nv = next_visit_for(group_id("frame"), start_utc=time.time())
        await env.sender.next_visit(nv)
        await env.sender.images(image_arrivals(nv, range(2)))
        await env.completions.wait_for(2)
        for r in env.completions.records:
            assert r["status"] == "failed" and r["attempt"] == 1
            assert "frame limit" in r["error"] and "reconnected" not in r["error"]
        assert len(env.book.pilots.connected()) == 2
        assert env.running.metrics.pilots_lost._value.get() == 0


async def test_multi_snap_jobs_keep_every_snap_across_restarts(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    """Detectors 0-1: snap 0 arrives, the dispatcher is killed, snap 1 arrives after the
    restart. Detectors 2-3: both snaps arrive and the jobs run when dispatcher *and* pilot are
    killed, so they are retried from the recovered state. Every run gets both URIs in snap
    order and the first snap's exposure id."""
    out = tmp_path / "fields"
    out.mkdir()
    script = (
        "import sys, time, pathlib; time.sleep(float(sys.argv[3]));"
        " pathlib.Path(sys.argv[1]).write_text(sys.argv[2])"
    )
    tasks = lsstcam_task_file(
        name="snaps", detectors="0-3", max_attempts=3,
        payload={"kind": "argv", "argv": [sys.executable, "-c", script,
                 f"{out}/{{detector}}-{{attempt}}", "{uris}|{obs_id}|{nimages}", "1.5"]},
    )  # fmt: skip
    settings = service_settings(isolated_settings, heartbeat_timeout_s=1.5)
    await apply_task_file(settings, tasks)

    def arrivals(nv_group: str, snap: int, detectors: range) -> list[ImageArrival]:
        return [
            ImageArrival("LSSTCam", nv_group, snap, d, f"s3://b/{d}-snap{snap}.fits",
                         obs_id=f"MC_O_20250501_00001{snap + 1}", day_obs=20250501)
            for d in detectors
        ]  # fmt: skip

    async with (
        served(settings, tmp_path, pilots=1, slots=4) as env,
        EventSender(settings) as sender,
        CompletionCollector(settings) as completions,
    ):
        nv = next_visit_for(group_id("snaps"), start_utc=time.time(), nimages=2)
        await sender.next_visit(nv)
        await sender.images(
            arrivals(nv.group_id, 0, range(4)) + arrivals(nv.group_id, 1, range(2, 4))
        )
        conn = await connect(settings.database_url or "")
        try:
            await wait_db(
                conn, "SELECT count(*) = 2 FROM jobs WHERE state = 'running'"
                " AND cardinality(snap_uris) = 2",
            )  # fmt: skip
            await wait_db(conn, "SELECT count(*) = 2 FROM jobs WHERE cardinality(snap_uris) = 1")
        finally:
            await conn.close()
        env.stop("sigkill")
        env.pilots[0].kill()
        await env.start()
        env.pilots[0] = start_pilot(settings, env.service.pilot_port, "p0b", slots=4,
                                    log_dir=tmp_path)  # fmt: skip
        await sender.images(arrivals(nv.group_id, 1, range(2)))
        await completions.wait_for(4, timeout=60)
    assert Counter(r["status"] for r in completions.records) == {"finished": 4}
    for d in range(4):
        (path,) = [p for p in out.iterdir() if p.name.startswith(f"{d}-")]
        uris, obs_id, nimages = path.read_text().split("|")
        assert uris == repr([f"s3://b/{d}-snap0.fits", f"s3://b/{d}-snap1.fits"]), d
        assert obs_id == "MC_O_20250501_000011" and nimages == "2"


async def test_readiness_shows_a_stalled_intake_or_writer_within_seconds(
    isolated_settings: Settings,
) -> None:
    """A table locked by someone else blocks the resurrection (intake) and then the state
    commits (writer): each time /readyz turns 503 naming the stalled part within seconds while
    /healthz stays 200, and is ready again once the lock is gone."""
    settings = service_settings(isolated_settings, stall_after_s=1.0)
    async with dispatcher_env(settings, sleep_task_file(mean_s=0.01, detectors="0-9")) as env:
        base = f"http://127.0.0.1:{env.running.http_port}"

        async def probe(path: str) -> tuple[int, dict[str, Any]]:
            async with aiohttp.ClientSession() as http, http.get(base + path) as resp:
                return resp.status, await resp.json()

        async def stalled_while_locked(send: Any, part: str) -> float:
            blocker = await connect(settings.database_url or "")
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            try:
                await send()
                started = time.monotonic()
                async with asyncio.timeout(15):
                    while (status := await probe("/readyz"))[0] == 200:
                        await asyncio.sleep(0.1)
                assert part in status[1]["stalled"], status
                assert (await probe("/healthz"))[0] == 200
                return time.monotonic() - started
            finally:
                await tx.rollback()
                await blocker.close()
                async with asyncio.timeout(15):
                    while (await probe("/readyz"))[0] != 200:
                        await asyncio.sleep(0.1)

        assert (await probe("/readyz"))[0] == 200
        nv = next_visit_for(group_id("stalled"), start_utc=time.time())
        intake_s = await stalled_while_locked(lambda: env.sender.next_visit(nv), "intake-control")
        await env.until(lambda: bool(env.book.visits))
        writer_s = await stalled_while_locked(
            lambda: env.sender.images(image_arrivals(nv, range(10))), "writer"
        )
        await env.completions.wait_for(10)
    assert intake_s < 10 and writer_s < 10
