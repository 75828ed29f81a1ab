"""Visits the dispatcher must not run, pilots it must refuse, and a pilot draining on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from prompt.config import Settings
from prompt.dispatcher.engine import JobState
from prompt.pilot import Pilot, PilotConfig, PilotRefusedError, SyntheticCalibrations
from prompt.store import connect
from prompt.testing.processes import start_pilot
from prompt.testing.tasks import sleep_task_file
from prompt.testing.traffic import image_arrivals, next_visit_for
from tests.env import dispatcher_env, group_id
from tests.helpers import run_prompt

pytestmark = pytest.mark.stack


async def test_visits_without_work_are_recorded_as_ignored(isolated_settings: Settings) -> None:
    tasks = sleep_task_file(mean_s=0.01)  # LSSTCam only
    async with dispatcher_env(isolated_settings, tasks, pilots=1) as env:
        latiss = next_visit_for(group_id("latiss"), start_utc=time.time(), instrument="LATISS")
        stale = next_visit_for(group_id("stale"), start_utc=time.time())
        stale_record = stale.to_record() | {"private_efdStamp": time.time() - 7200}
        not_obs = next_visit_for(group_id("slew"), start_utc=time.time(), instrument="")
        await env.sender.next_visit(latiss)
        await env.sender.raw(
            env.settings.topics.next_visit, env.sender.nv_codec.encode(stale_record)
        )
        await env.sender.next_visit(not_obs)
        good = next_visit_for(group_id("good"), start_utc=time.time())
        await env.sender.next_visit(good)
        await env.sender.images(image_arrivals(latiss, range(3)) + image_arrivals(good, range(3)))
        await env.until(lambda: len(env.book.visits) == 1)
        ignored = env.running.metrics.ignored
        await env.until(lambda: ignored.labels("next-visit", "no_task")._value.get() == 1)
        assert ignored.labels("next-visit", "stale")._value.get() == 1
        assert ignored.labels("next-visit", "not_observation")._value.get() == 1
        # Counted whether they came before their (ignored) next-visit was read, or after.
        await env.until(lambda: ignored.labels("image-arrival", "visit_closed")._value.get() == 3)
        conn = await connect(env.settings.database_url or "")
        try:
            rows = await conn.fetch(
                "SELECT group_id, status, ignore_reason FROM visits ORDER BY id"
            )
        finally:
            await conn.close()
        assert [(r["status"], r["ignore_reason"]) for r in rows] == [
            ("ignored", "no_task"), ("ignored", "stale"), ("active", None),
        ]  # fmt: skip


async def test_pilot_with_a_wrong_token_is_refused(isolated_settings: Settings) -> None:
    async with dispatcher_env(isolated_settings, sleep_task_file(), pilots=0) as env:
        config = PilotConfig(
            dispatcher=f"127.0.0.1:{env.running.pilot_port}", token="wrong", slots=1
        )
        with pytest.raises(PilotRefusedError, match="bad token"):
            async with asyncio.timeout(20):
                await Pilot(config, SyntheticCalibrations()).run(asyncio.Event())
        assert env.book.pilots.connected() == []


async def test_sigterm_pilot_finishes_running_jobs_then_exits(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    async with dispatcher_env(
        isolated_settings, sleep_task_file(mean_s=1.5, detectors="0-5"), pilots=0
    ) as env:
        pilot = start_pilot(
            env.settings, env.running.pilot_port, "drainer", slots=6, log_dir=tmp_path
        )
        await env.until(lambda: len(env.book.pilots.connected()) == 1)
        nv = next_visit_for(group_id("drain"), start_utc=time.time())
        await env.sender.next_visit(nv)
        await env.sender.images(image_arrivals(nv, range(6)))
        d = env.book
        await env.until(lambda: sum(j.state is JobState.RUNNING for j in d.jobs.values()) == 6)
        pilot.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(pilot.proc.wait, 30)
        assert code == 0
        await env.completions.wait_for(6)
        assert {(r["status"], r["attempt"]) for r in env.completions.records} == {("finished", 1)}
        # The dispatcher's HTTP side answers for operators.
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{env.running.http_port}"
            async with http.get(f"{base}/metrics") as resp:
                text = await resp.text()
            assert "prompt_jobs_completed_total" in text
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200


def test_tasks_cli_applies_and_lists(isolated_settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "tasks.yaml"
    path.write_text(
        "- {name: alerts, instrument: LSSTCam, payload: {kind: sleep},"
        " detectors: {include: '0-188', exclude: '0,20'}}\n"
    )
    env = {"PROMPT_DATABASE_URL": isolated_settings.database_url or ""}
    first = run_prompt("tasks", "apply", str(path), env=env)
    assert first.returncode == 0, first.stderr.decode()
    assert b"alerts: created (version 1)" in first.stdout
    again = run_prompt("tasks", "apply", str(path), env=env)
    assert b"alerts: unchanged (version 1)" in again.stdout
    listed = run_prompt("tasks", "list", env=env)
    assert b'"detectors": 187' in listed.stdout
    path.write_text("- {name: alerts, instrument: LSSTCam, payload: {kind: nope}}\n")
    bad = run_prompt("tasks", "apply", str(path), env=env)
    assert bad.returncode == 2 and b"payload" in bad.stderr
