"""A stopping pilot's drain is bounded by its drain timeout: a job that hangs, or a dispatcher
gone for good, does not keep it up. It stops its workers, says what it left, and exits; the
dispatcher runs what was left again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path

import pytest
import structlog

from prompt.channel import protocol as p
from prompt.channel.protocol import Channel, Message
from prompt.config import Settings
from prompt.dispatcher.engine import JobState
from prompt.pilot import Pilot, PilotConfig, SyntheticCalibrations
from prompt.pilot.drain import IDS_SHOWN, abandoned
from prompt.testing.processes import start_pilot
from prompt.testing.tasks import sleep_task_file
from prompt.testing.traffic import image_arrivals, next_visit_for
from tests.env import dispatcher_env, group_id

GUARD_S = 30.0
"""A failure guard on a pilot's exit, not the thing measured: the drain timeouts here are 1 s,
and without the bound the pilots never exit."""
ABANDONED = "drain timed out"


def test_abandoned_work_is_counted_in_full_and_listed_within_a_bound() -> None:
    fields = abandoned([5, 3], [], range(100 + IDS_SHOWN + 5, 100, -1))
    assert fields == {
        "running": 2, "running_jobs": [3, 5], "queued": 0, "queued_jobs": [],
        "unacked": IDS_SHOWN + 5, "unacked_jobs": list(range(101, 101 + IDS_SHOWN)),
    }  # fmt: skip


async def test_a_pilot_whose_dispatcher_is_gone_for_good_exits_after_its_drain_timeout() -> None:
    """The dispatcher pushes a job, takes its result without acknowledging it and goes away
    (connections refused from then on). Stopped, the pilot would wait for the acknowledgement,
    reconnecting with backoff, for ever; it exits after its drain timeout instead."""
    job = {"t": p.JOB, "job": 7, "attempt": 1, "timeout_s": 30.0, "deadline": None,
           "payload": {"kind": "sleep", "params": {"mean_s": 0.0}},
           "fields": {"instrument": "LSSTCam", "detector": 3, "filter": "r_57",
                      "day_obs": 20250501}}  # fmt: skip
    results: asyncio.Queue[Message] = asyncio.Queue()

    async def dispatcher(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        channel = Channel(reader, writer)
        assert (await channel.receive())["t"] == p.REGISTER
        channel.send({"t": p.WELCOME, "heartbeat_s": 1.0, "scheduling": "push"})
        channel.send(job)
        while (msg := await channel.receive())["t"] != p.FINISHED:
            pass
        server.close()  # gone for good: no new connection is accepted
        await channel.close()
        results.put_nowait(msg)

    server = await asyncio.start_server(dispatcher, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = PilotConfig(
        dispatcher=f"127.0.0.1:{port}", token="t", pilot_id="orphan", slots=1,
        reconnect_max_s=0.2, drain_timeout_s=1.0,
    )  # fmt: skip
    pilot = Pilot(config, SyntheticCalibrations(nbytes=16, load_s=0.0))
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        run = asyncio.create_task(pilot.run(stop))
        try:
            assert (await asyncio.wait_for(results.get(), GUARD_S))["ok"]
            stop.set()
            await asyncio.wait_for(asyncio.shield(run), GUARD_S)
        finally:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
    [warning] = [e for e in logs if ABANDONED in e["event"]]
    assert warning["log_level"] == "warning" and warning["timeout_s"] == 1.0
    assert warning["unacked"] == 1 and warning["unacked_jobs"] == [7]
    assert warning["running"] == 0 and warning["queued"] == 0
    # It tried to reconnect, backing off (it used to retry at once while draining, a busy loop;
    # backing off from reconnect_min_s, there is time for at most this many attempts).
    lost = sum(e["event"] == "dispatcher connection lost" for e in logs)
    assert 1 <= lost <= config.drain_timeout_s / config.reconnect_min_s + 3


@pytest.mark.stack
async def test_sigterm_pilot_with_a_hung_job_exits_after_its_drain_timeout(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    """Two jobs that run far longer than the drain timeout (and within their own timeout): on
    SIGTERM the pilot kills them after ``--drain-timeout-s``, logs them and exits 0; the
    dispatcher declares it lost and runs them again on another pilot."""
    tasks = sleep_task_file(mean_s=300.0, detectors="0-1", job_timeout_s=600.0)
    short = ("--drain-timeout-s", "1")
    async with dispatcher_env(isolated_settings, tasks, pilots=0) as env:
        hung = start_pilot(env.settings, env.running.pilot_port, "hung", slots=2,
                           log_dir=tmp_path, extra_args=short)  # fmt: skip
        rescuer = None
        try:
            await env.until(lambda: len(env.book.pilots.connected()) == 1)
            nv = next_visit_for(group_id("hung"), start_utc=time.time())
            await env.sender.next_visit(nv)
            await env.sender.images(image_arrivals(nv, range(2)))
            jobs = env.book.jobs.values()
            await env.until(lambda: sum(j.state is JobState.RUNNING for j in jobs) == 2)
            ids = sorted(j.id for j in jobs)
            hung.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(hung.proc.wait, GUARD_S) == 0
            records = [json.loads(line) for line in hung.log.read_text().splitlines()
                       if line.startswith("{")]  # fmt: skip
            [warning] = [r for r in records if ABANDONED in r["event"]]
            assert warning["level"] == "warning"
            assert warning["running"] == 2 and warning["running_jobs"] == ids
            assert warning["queued"] == 0 and warning["unacked"] == 0

            rescuer = start_pilot(env.settings, env.running.pilot_port, "rescuer", slots=2,
                                  log_dir=tmp_path, extra_args=short)  # fmt: skip

            def rerun() -> bool:
                return all(
                    j.state is JobState.RUNNING and j.attempt == 2 and j.pilot_id == "rescuer"
                    for j in jobs
                )

            await env.until(rerun)
        finally:
            hung.stop_if_running()
            if rescuer is not None:
                rescuer.stop_if_running()
