"""The scheduling chosen at start-up and the failure kinds, through real processes: the
embedded broker and database, ``prompt pilot`` processes, and (for cold mode) ``prompt serve``."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from prompt.config import Settings
from prompt.store import connect
from prompt.testing.tasks import apply_task_file, lsstcam_task_file, sleep_task_file
from prompt.testing.traffic import CompletionCollector, EventSender, image_arrivals, next_visit_for
from tests.env import group_id, pilot_processes, served, service_settings

pytestmark = pytest.mark.stack

REJECTED = 3
"""The detector whose payload refuses its input (exit status 65, sysexits' EX_DATAERR)."""


async def test_cold_mode_runs_a_full_visit_with_plain_pilots(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    """``PROMPT_DISPATCH_MODE=cold`` and ``prompt pilot`` without a poll flag: the welcome
    tells the pilots to poll, and every one of the 189 jobs completes once."""
    settings = service_settings(isolated_settings, dispatch_mode="cold", poll_s=0.2)
    await apply_task_file(settings, sleep_task_file(mean_s=0.0))
    async with (
        served(settings, tmp_path, pilots=3, slots=8) as env,
        EventSender(settings) as sender,
        CompletionCollector(settings) as completions,
    ):
        nv = next_visit_for(group_id("cold"), start_utc=time.time())
        await sender.next_visit(nv)
        await sender.images(image_arrivals(nv, range(189)))
        await completions.wait_for(189, timeout=90)
        await asyncio.sleep(0.5)  # a duplicate would arrive in this window
        status = await env.service.status()
    records = completions.for_group(nv.group_id)
    assert sorted(r["detector"] for r in records) == list(range(189))
    assert completions.duplicates() == 0
    assert Counter((r["status"], r["attempt"]) for r in records) == {("finished", 1): 189}
    assert len({r["pilot"] for r in records}) > 1, "the work is shared between pilots"
    assert status["scheduling"] == "poll"
    conn = await connect(settings.database_url or "")
    try:
        states = await conn.fetch("SELECT state, count(*) FROM jobs GROUP BY state")
        assert [tuple(r) for r in states] == [("finished", 189)]
    finally:
        await conn.close()


async def test_rejected_input_fails_at_once_while_a_lost_pilot_is_retried(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    """One visit, two outcomes: the payload of detector 3 exits 65 (its input will never
    work), so it fails on attempt 1 with the reason; the jobs of a pilot killed with -9
    mid-run are retried elsewhere and finish on attempt 2."""
    reject = (
        "import sys\n"
        f"if sys.argv[1] == '{REJECTED}':\n"
        "    print('header EXPTIME missing: not a science raw', file=sys.stderr); sys.exit(65)\n"
        "import time; time.sleep(3.0)\n"
    )
    tasks = lsstcam_task_file(
        name="reject", detectors="0-19", max_attempts=3,
        payload={"kind": "argv", "argv": [sys.executable, "-c", reject, "{detector}"]},
    )  # fmt: skip
    settings = service_settings(isolated_settings)
    async with pilot_processes(settings, tasks, tmp_path) as env:
        book, completions = env.book, env.completions
        nv = next_visit_for(group_id("reject"), start_utc=time.time())
        await env.sender.next_visit(nv)
        await env.sender.images(image_arrivals(nv, range(20)))
        await completions.wait_for(1, timeout=30)
        await env.until_running(19)
        victim = next(p for p in env.pilots if book.pilots.pilots[p.pilot_id].running)
        on_victim = set(book.pilots.pilots[victim.pilot_id].running)
        victim.kill()
        await completions.wait_for(20, timeout=60)
        await asyncio.sleep(0.5)  # a duplicate would arrive in this window
        await env.running.writer.flush()
    assert completions.duplicates() == 0
    by_det = {r["detector"]: r for r in completions.records}
    rejected = by_det.pop(REJECTED)
    assert (rejected["status"], rejected["attempt"]) == ("failed", 1)
    assert rejected["failureKind"] == "rejected_input"
    assert "exit status 65" in rejected["error"]
    assert "header EXPTIME missing" in rejected["error"]
    assert on_victim, "the victim was running jobs when it was killed"
    for r in by_det.values():
        expected = 2 if r["jobId"] in on_victim else 1
        assert (r["status"], r["attempt"], r["failureKind"]) == ("finished", expected, None)
        if r["jobId"] in on_victim:
            assert r["pilot"] != victim.pilot_id
    assert env.running.metrics.pilots_lost._value.get() == 1
    conn = await connect(settings.database_url or "")
    try:
        row = await conn.fetchrow(
            "SELECT state, attempt, failure, error FROM jobs WHERE detector = $1", REJECTED
        )
        assert row is not None
        assert (row["state"], row["attempt"], row["failure"]) == ("failed", 1, "rejected_input")
        assert "header EXPTIME missing" in row["error"]
        retried = await conn.fetchval(
            "SELECT count(*) FROM jobs WHERE state = 'finished' AND attempt = 2"
        )
        assert retried == len(on_victim)
    finally:
        await conn.close()
